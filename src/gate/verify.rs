//! `flash_sale_verify`: a checkout passes requests whose token is a valid permit.

use ngx::core::Status;
use ngx::http::{HTTPStatus, Request};
use ngx::ngx_log_error;

use crate::conf::{LocConf, Value, ZoneRef};
use crate::ffi::Next;
use crate::gate::verdict::{evaluate, record, reject, request_key, Decision};
use crate::http::now_ms;
use crate::page::Figures;
use crate::sale::{Held, Outcome, PermitKey};
use crate::token;
use crate::zone::Stats;

/// `flash_sale_verify`: passes a request whose token is a valid permit of `zone` for its own
/// key, and answers 403 with the reason otherwise. For a main request in its precontent
/// phase; `zone` and `token` belong to its location's configuration.
pub fn verify(
    req: &mut Request,
    lcf: &LocConf,
    zone: ZoneRef,
    token: Option<Value>,
    item: Option<Value>,
) -> Next {
    let server_error = || HTTPStatus::INTERNAL_SERVER_ERROR.into();
    let Some(key) = request_key(req, &zone) else {
        return server_error();
    };
    let item = match item {
        Some(value) => match evaluate(req, value) {
            Some(item) => Some(item),
            None => return server_error(),
        },
        None => None,
    };
    let token = match token {
        Some(value) => match evaluate(req, value) {
            Some(value) => value,
            None => return server_error(),
        },
        None => bearer_token(req),
    };
    // `flash_sale_verify` is refused at configuration time without a secret.
    let Some(secret) = lcf.token_secret else {
        return server_error();
    };
    let zone_name = zone.name();
    let name = zone_name.to_str().unwrap_or_default();
    let checked = token::verify(secret.as_bytes(), token, name, key, item, now_ms());
    if let Some(table) = zone.table_ref() {
        let stats = &table.stats;
        Stats::count(if checked.is_ok() { &stats.tokens_valid } else { &stats.tokens_refused });
    }
    let refusal = match checked {
        Ok((seq, expires_ms)) => {
            let held = Held { seq, expires_ms };
            let key = PermitKey { key, item: item.unwrap_or_default() };
            let decision = Decision::passed(Outcome::Permitted, held, zone, key);
            return match record(req, decision) {
                Some(()) => Status::NGX_DECLINED.into(),
                None => server_error(),
            };
        }
        Err(refusal) => refusal,
    };
    let dry_run = lcf.dry_run();
    ngx_log_error!(
        lcf.log_level(),
        req.log(),
        "flash sale: {} in zone \"{}\"{}",
        refusal.as_str(),
        zone_name,
        if dry_run { ", dry run" } else { "" }
    );
    if dry_run {
        return Status::NGX_DECLINED.into();
    }
    reject(req, 403, &refusal.words(), &Figures::default())
}

/// The token of an `Authorization: Bearer TOKEN` header; empty without one. It lives in the
/// request's memory, as long as the request: not tied to this borrow.
fn bearer_token<'r>(req: &Request) -> &'r [u8] {
    // SAFETY: the header, when present, lives as long as the request.
    let Some(header) = (unsafe { req.as_ref().headers_in.authorization.as_ref() }) else {
        return &[];
    };
    // SAFETY: as above.
    let value = unsafe { core::slice::from_raw_parts(header.value.data, header.value.len) };
    match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"Bearer ") => token.trim_ascii(),
        _ => &[],
    }
}
