//! `flash_sale_verify`: a checkout passes requests whose token is a valid permit.

use core::ptr::NonNull;

use nginx_sys::{
    ngx_http_complex_value_t, ngx_http_request_t, ngx_int_t, NGX_DECLINED, NGX_HTTP_FORBIDDEN,
    NGX_HTTP_INTERNAL_SERVER_ERROR,
};
use ngx::http::Request;
use ngx::ngx_log_error;

use crate::conf::{LocConf, ZoneConf};
use crate::gate::verdict::{record, reject, request_key, Decision};
use crate::http::now_ms;
use crate::sale::{Held, Outcome};
use crate::token;
use crate::zone::Stats;

/// `flash_sale_verify`: passes a request whose token is a valid permit of `zone` for its own
/// key, and answers 403 with the reason otherwise.
///
/// # Safety
/// `r` is a live main request in its precontent phase; `zone` and `token` belong to its
/// location's configuration.
pub unsafe fn verify(
    r: *mut ngx_http_request_t,
    lcf: &LocConf,
    zone_ptr: NonNull<ZoneConf>,
    token: Option<NonNull<ngx_http_complex_value_t>>,
) -> ngx_int_t {
    const SERVER_ERROR: ngx_int_t = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    // SAFETY: see the function's contract.
    let (req, zone) = unsafe { (Request::from_ngx_http_request(r), zone_ptr.as_ref()) };
    // SAFETY: `r` is live.
    let Some(key) = (unsafe { request_key(r, zone) }) else {
        return SERVER_ERROR;
    };
    let token = match token {
        // SAFETY: the complex value was compiled by `flash_sale_verify` for this location.
        Some(value) => match req.get_complex_value(unsafe { value.as_ref() }) {
            Some(value) => value.as_bytes(),
            None => return SERVER_ERROR,
        },
        // SAFETY: `r` is live.
        None => unsafe { bearer_token(r) },
    };
    // `flash_sale_verify` is refused at configuration time without a secret.
    let Some(secret) = lcf.token_secret else {
        return SERVER_ERROR;
    };
    let zone_name = zone.name();
    let name = zone_name.to_str().unwrap_or_default();
    let checked = token::verify(secret.as_bytes(), token, name, key, now_ms());
    if let Some(table) = zone.table_ref() {
        let stats = &table.stats;
        Stats::count(if checked.is_ok() { &stats.tokens_valid } else { &stats.tokens_refused });
    }
    let refusal = match checked {
        Ok((seq, expires_ms)) => {
            let held = Held { seq, expires_ms };
            let decision = Decision::passed(Outcome::Permitted, held, zone_ptr, key);
            // SAFETY: `r` is live.
            return match unsafe { record(r, decision) } {
                Some(()) => NGX_DECLINED as ngx_int_t,
                None => SERVER_ERROR,
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
        return NGX_DECLINED as ngx_int_t;
    }
    // SAFETY: `r` is live and nothing has been sent yet.
    unsafe { reject(r, NGX_HTTP_FORBIDDEN as u16, refusal.message(), None) }
}

/// The token of an `Authorization: Bearer TOKEN` header; empty without one.
///
/// # Safety
/// `r` is a live request.
unsafe fn bearer_token<'r>(r: *mut ngx_http_request_t) -> &'r [u8] {
    // SAFETY: the header, when present, lives as long as the request.
    let Some(header) = (unsafe { (*r).headers_in.authorization.as_ref() }) else {
        return &[];
    };
    // SAFETY: as above.
    let value = unsafe { core::slice::from_raw_parts(header.value.data, header.value.len) };
    match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"Bearer ") => token.trim_ascii(),
        _ => &[],
    }
}
