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
};
use ngx::core::Status;
use ngx::http::{HTTPStatus, HttpModuleMainConf, NgxHttpCoreModule, Request};

use crate::conf::{Gate, LocConf, Verify};
use crate::ffi::Next;
use crate::sale::PermitKey;
use verdict::{recorded, request_item, request_key, request_sale};
use verify::verify;

/// Puts the gate into the precontent phase (postconfiguration).
pub unsafe extern "C" fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    crate::ffi::guard(Status::NGX_ERROR.0, || {
        // SAFETY: `cf` is the http block's configuration during postconfiguration.
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(unsafe { &*cf }) else {
            return Status::NGX_ERROR.0;
        };
        let handlers = &mut cmcf.phases[PRECONTENT_PHASE as usize].handlers;
        // SAFETY: the phase's handler array holds `ngx_http_handler_pt` elements.
        let slot = unsafe { ngx_array_push(handlers) }.cast::<ngx_http_handler_pt>();
        if slot.is_null() {
            return Status::NGX_ERROR.0;
        }
        // SAFETY: `slot` is a fresh element of the array. The header filter chain is built during
        // postconfiguration, one module after another, as nginx's own filters do.
        unsafe {
            slot.write(Some(gate_handler));
            crate::release::install();
        }
        Status::NGX_OK.0
    })
}

unsafe extern "C" fn gate_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A panic must not unwind into nginx; the zone lock's guard is released while unwinding.
    // SAFETY: nginx passes a live request in its precontent phase.
    unsafe { crate::ffi::handle(r, HTTPStatus::INTERNAL_SERVER_ERROR.into(), gate) }
}

/// Decides a request in its precontent phase.
fn gate(req: &mut Request) -> Next {
    // Subrequests belong to a request that was already decided.
    if !req.is_main() {
        return Status::NGX_DECLINED.into();
    }
    let Some(lcf) = LocConf::of(req) else {
        return Status::NGX_DECLINED.into();
    };
    if !matches!(lcf.gate, Gate::Zone(_)) && !matches!(lcf.verify, Verify::Zone { .. }) {
        return Status::NGX_DECLINED.into();
    }
    // Internal redirects (error_page, try_files, rewrite ... last) come back through here.
    if recorded(req).is_some() {
        return Status::NGX_DECLINED.into();
    }
    if let Verify::Zone { zone, token, item } = lcf.verify {
        // A valid token proves the permit: the gate, if any, is not asked again.
        return verify(req, lcf, zone, token, item);
    }
    let Gate::Zone(zone) = lcf.gate else {
        return Status::NGX_DECLINED.into();
    };
    let (Some(key), Some(item)) = (request_key(req, &zone), request_item(req, lcf)) else {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    };
    let key = PermitKey { key, item };
    let Some(sale) = request_sale(req, lcf, zone, key) else {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    };
    if zone.redis.is_some() {
        return redis::gate(req, lcf, zone, key, sale);
    }
    local::gate(req, lcf, zone, key, sale)
}
