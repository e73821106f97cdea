//! HTTP endpoints of the module: `flash_sale_metrics` (Prometheus text).

use core::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t,
    ngx_pagesize, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_NOT_ALLOWED, NGX_OK,
};
use ngx::core::{SlabPool, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule, Request};
use ngx::ngx_string;

use crate::conf::ZoneConf;
use crate::handler::{send, Body};
use crate::metrics::{render, ZoneMetrics};
use crate::module::FlashSaleModule;
use crate::zone::ZoneStore;

/// `flash_sale_metrics;` makes the location answer with the metrics.
pub unsafe extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: `cf` is the location's configuration context while it is parsed.
    match NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) {
        Some(clcf) => {
            clcf.handler = Some(metrics_handler);
            NGX_CONF_OK
        }
        None => NGX_CONF_ERROR,
    }
}

unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request in its content phase.
    catch_unwind(AssertUnwindSafe(|| unsafe { metrics(r) }))
        .unwrap_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)
}

/// # Safety
/// `r` is a live request in its content phase.
unsafe fn metrics(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    // SAFETY: as above.
    if unsafe { (*r).method } & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: as above.
    if unsafe { ngx_http_discard_request_body(r) } != NGX_OK as ngx_int_t {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    let Some(main) = FlashSaleModule::main_conf(req) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    // SAFETY: zone configurations live in the cycle's pool, as long as this location.
    let zones: Vec<ZoneMetrics> =
        main.zones.iter().filter_map(|zone| zone_metrics(unsafe { zone.as_ref() })).collect();
    let text = render(&zones);
    let content_type = ngx_string!("text/plain; version=0.0.4");
    // SAFETY: `r` is live and its response has not started.
    unsafe { send(r, 200, content_type, Body::Copied(text.as_bytes())) }
}

/// Reads a zone's figures: the counters without the lock, the permits and memory with it.
fn zone_metrics(zone: &ZoneConf) -> Option<ZoneMetrics> {
    // SAFETY: the zone is mapped in every worker; its table was made by `init_zone`.
    let shm = unsafe { zone.shm_zone.as_ref() };
    let slab = unsafe { SlabPool::from_shm_zone(shm) }?;
    let now = crate::handler::now_ms();
    let mut store = unsafe { ZoneStore::new(&slab, zone.table?, now) };
    let permits = store.permits();
    let table = store.table();
    let stats = &table.stats;
    let load = |c: &core::sync::atomic::AtomicU64| c.load(core::sync::atomic::Ordering::Relaxed);
    let free_pages = {
        let _locked = slab.lock();
        slab.as_ref().pfree as u64
    };
    let total = shm.shm.size as u64;
    Some(ZoneMetrics {
        name: shm.shm.name.to_string(),
        requests: core::array::from_fn(|i| load(&stats.requests[i])),
        permits,
        granted: load(&stats.granted),
        revoked: load(&stats.revoked),
        expired: load(&stats.expired),
        max_permits: table.overrides.get().1.or(zone.largest_cap),
        // SAFETY: nginx sets the page size at startup.
        bytes_used: total.saturating_sub(free_pages * unsafe { ngx_pagesize } as u64),
        bytes_total: total,
    })
}
