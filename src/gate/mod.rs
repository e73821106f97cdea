//! The gate: nginx's precontent phase asks it about every request of a gated location. It
//! runs after the access phase, so requests refused by `limit_req`, `limit_conn`,
//! `allow`/`deny`, `auth_basic` or `auth_request` never draw and never take a permit.
//!
//! - `verdict`: the steps every path shares: the key, the draw, the conclusion (counting,
//!   logging, recording, answering a rejection);
//! - `local`: a zone kept here; `redis`: a zone kept in Redis (a round trip with the request
//!   suspended); `verify`: `flash_sale_verify`, a signed permit at the checkout.

pub mod local;
pub mod redis;
pub mod verdict;
pub mod verify;

use nginx_sys::{
    ngx_array_push, ngx_conf_t, ngx_http_handler_pt,
    ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE as PRECONTENT_PHASE, ngx_http_request_t, ngx_int_t,
    NGX_DECLINED, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_OK,
};
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule, Request};

use crate::conf::{Gate, LocConf, Verify, ZoneConf};
use verdict::{recorded, request_key};
use verify::verify;

/// Puts the gate into the precontent phase (postconfiguration).
pub unsafe extern "C" fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    crate::ffi::guard(nginx_sys::NGX_ERROR as ngx_int_t, || {
        // SAFETY: `cf` is the http block's configuration during postconfiguration.
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(unsafe { &*cf }) else {
            return NGX_ERROR as ngx_int_t;
        };
        let handlers = &mut cmcf.phases[PRECONTENT_PHASE as usize].handlers;
        // SAFETY: the phase's handler array holds `ngx_http_handler_pt` elements.
        let slot = unsafe { ngx_array_push(handlers) }.cast::<ngx_http_handler_pt>();
        if slot.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY: `slot` is a fresh element of the array. The header filter chain is built during
        // postconfiguration, one module after another, as nginx's own filters do.
        unsafe {
            slot.write(Some(gate_handler));
            crate::release::install();
        }
        NGX_OK as ngx_int_t
    })
}

unsafe extern "C" fn gate_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A panic must not unwind into nginx; the zone lock's guard is released while unwinding.
    // SAFETY: nginx passes a live request.
    crate::ffi::guard(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || unsafe { gate(r) })
}

/// # Safety
/// `r` is a live request in its precontent phase.
unsafe fn gate(r: *mut ngx_http_request_t) -> ngx_int_t {
    const DECLINED: ngx_int_t = NGX_DECLINED as ngx_int_t;
    const SERVER_ERROR: ngx_int_t = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;

    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    // Subrequests belong to a request that was already decided.
    if !req.is_main() {
        return DECLINED;
    }
    let Some(lcf) = LocConf::of(req) else {
        return DECLINED;
    };
    if !matches!(lcf.gate, Gate::Zone(_)) && !matches!(lcf.verify, Verify::Zone { .. }) {
        return DECLINED;
    }
    // Internal redirects (error_page, try_files, rewrite ... last) come back through here.
    // SAFETY: `r` is live.
    if unsafe { recorded(r) }.is_some() {
        return DECLINED;
    }
    if let Verify::Zone { zone, token } = lcf.verify {
        // A valid token proves the permit: the gate, if any, is not asked again.
        // SAFETY: `r` is live; zone configurations live as long as the location.
        return unsafe { verify(r, lcf, zone, token) };
    }
    let Gate::Zone(zone) = lcf.gate else {
        return DECLINED;
    };
    let zone_ptr = zone;
    // SAFETY: zone configurations live in the cycle's pool, as long as the location does.
    let zone: &ZoneConf = unsafe { zone.as_ref() };
    // SAFETY: `r` is live.
    let Some(key) = (unsafe { request_key(r, zone) }) else {
        return SERVER_ERROR;
    };
    if zone.redis.is_some() {
        // SAFETY: `r` is live, in its precontent phase.
        return unsafe { redis::gate(r, lcf, zone_ptr, key) };
    }
    // SAFETY: `r` is live, in its precontent phase.
    unsafe { local::gate(r, lcf, zone_ptr, key) }
}
