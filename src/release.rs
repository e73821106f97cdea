//! `flash_sale_release_header`: a backend's answer with that header revokes the buyer's permit
//! (here and, for a zone kept in Redis, there): a failed payment gives the slot back.

use nginx_sys::{
    ngx_http_output_header_filter_pt, ngx_http_request_t, ngx_http_top_header_filter, ngx_int_t,
    ngx_list_part_t, ngx_table_elt_t, NGX_LOG_ERR, NGX_LOG_NOTICE,
};
use ngx::core::Status;
use ngx::http::Request;
use ngx::ngx_log_error;

use crate::conf::LocConf;
use crate::gate::redis;
use crate::gate::verdict::recorded;
use crate::http::now_ms;
use crate::state;

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;

/// Puts the release filter into nginx's header filter chain (postconfiguration).
///
/// # Safety
/// Called once, during postconfiguration, as nginx's own filters build the chain.
pub unsafe fn install() {
    // SAFETY: see the function's contract.
    unsafe {
        NEXT_HEADER_FILTER = ngx_http_top_header_filter;
        ngx_http_top_header_filter = Some(release_filter);
    }
}

/// `flash_sale_release_header`: a backend's answer with that header revokes the buyer's permit.
unsafe extern "C" fn release_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request whose headers are about to be sent.
    unsafe { crate::ffi::with_request(r, (), release) };
    // SAFETY: the next filter was set at postconfiguration, before any request; `r` is live.
    unsafe {
        match NEXT_HEADER_FILTER {
            Some(next) => next(r),
            None => Status::NGX_ERROR.0,
        }
    }
}

/// Revokes the permit of a request whose backend's answer, about to be sent, has the header.
fn release(req: &mut Request) {
    if !req.is_main() || req.upstream().is_none() {
        return;
    }
    let Some(name) = LocConf::of(req).and_then(|lcf| lcf.release_header) else {
        return;
    };
    // Only the backend's header counts: it is removed before the client sees it.
    let mut found = false;
    // SAFETY: the output header list holds `ngx_table_elt_t` in null-terminated parts.
    unsafe {
        let mut part: *mut ngx_list_part_t = &mut req.as_mut().headers_out.headers.part;
        while let Some(p) = part.as_mut() {
            let elts = core::slice::from_raw_parts_mut(p.elts.cast::<ngx_table_elt_t>(), p.nelts);
            for h in elts.iter_mut().filter(|h| h.hash != 0) {
                if h.key.as_bytes().eq_ignore_ascii_case(name.as_bytes()) {
                    h.hash = 0;
                    found = true;
                }
            }
            part = p.next;
        }
    }
    let Some(decision) = recorded(req) else {
        return;
    };
    if !found || !decision.outcome.passes() {
        return;
    }
    // SAFETY: the key lives in the request's memory, as long as the request.
    let (zone, key) = (decision.zone.get(), unsafe { decision.key() });
    let Some(mut store) = zone.store(now_ms()) else {
        return;
    };
    // The permit this request was decided with, and no other (the buyer may hold a new one):
    // on disk first, so that a release the state file cannot keep is not made here either.
    let seq = decision.seq;
    let revoked = store.get(key).is_some_and(|p| p.seq == seq)
        && zone.journal(|| state::revoke(seq), req.log())
        && store.revoke_numbered(key, seq);
    let revoked = revoked.then_some(seq);
    if !redis::release(zone, key) {
        ngx_log_error!(
            NGX_LOG_ERR,
            req.log(),
            "flash_sale_redis zone \"{}\": cannot queue the release of permit {}",
            zone.name(),
            decision.seq
        );
    }
    ngx_log_error!(
        NGX_LOG_NOTICE,
        req.log(),
        "flash sale: the backend released permit {} in zone \"{}\"{}",
        decision.seq,
        zone.name(),
        if revoked.is_some() { "" } else { ", which was already gone" }
    );
}
