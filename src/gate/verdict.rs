//! What every path through the gate shares: the request's key, the draw, and the
//! conclusion: counting, logging and recording the verdict, and answering a rejection.

use core::cell::RefCell;
use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::NonNull;

use nginx_sys::{
    ngx_http_discard_request_body, ngx_http_err_page_t, ngx_http_finalize_request,
    ngx_http_get_flushed_variable, ngx_http_request_t, ngx_int_t, ngx_pool_cleanup_add, ngx_str_t,
    ngx_timeofday, NGX_DECLINED, NGX_DONE, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule, Request};
use ngx::{ngx_log_debug_http, ngx_log_error, ngx_string};
use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::conf::{LocConf, ZoneConf};
use crate::http::{add_header, send, Body};
use crate::sale::{DrawMode, Held, Outcome, Sale, Verdict, MAX_KEY_LEN};
use crate::zone::{keyed_draw, Stats};

/// A request the gate decides, and what every step of the decision reads.
pub struct Gated<'r> {
    pub r: *mut ngx_http_request_t,
    pub lcf: &'r LocConf,
    pub zone: NonNull<ZoneConf>,
    /// The buyer's key, in the request's memory.
    pub key: &'r [u8],
    pub now: i64,
    /// The location's sale with the zone's overrides applied.
    pub sale: Sale,
}

/// The draw for this location's mode: a fresh number per request, or the key's number for
/// the round, with `secret` (the zone's, or the sale's shared through Redis).
pub fn drawer<'a>(
    lcf: &LocConf,
    secret: [u64; 2],
    key: &'a [u8],
    now: i64,
) -> impl FnOnce() -> f64 + 'a {
    let mode = lcf.draw.unwrap_or_default();
    move || match mode {
        DrawMode::PerRequest => draw(),
        DrawMode::PerKey { .. } => keyed_draw(secret, key, mode.round(now)),
    }
}

/// Counts, logs and records a verdict, and answers a rejection; returns what the phase
/// handler returns.
///
/// # Safety
/// `g.r` is a live main request in its precontent phase.
pub unsafe fn conclude(g: &Gated<'_>, verdict: Verdict) -> ngx_int_t {
    let Gated { r, lcf, zone: zone_ptr, key, now, ref sale } = *g;
    // SAFETY: see the function's contract; zone configurations live as long as the location.
    let (req, zone) = unsafe { (Request::from_ngx_http_request(r), zone_ptr.as_ref()) };
    let outcome = verdict.outcome;
    let dry_run = lcf.dry_run();
    if let Some(table) = zone.table_ref() {
        Stats::count(&table.stats.requests[outcome.counter(dry_run)]);
    }
    let log = req.log();
    let zone_name = zone.name();
    if outcome == Outcome::KeyTooLong {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash sale key of {} bytes is longer than {} bytes, refused",
            key.len(),
            MAX_KEY_LEN
        );
    }
    ngx_log_debug_http!(req, "flash sale: {} in zone \"{}\"", outcome, zone_name);
    if !outcome.passes() {
        ngx_log_error!(
            lcf.log_level(),
            log,
            "flash sale: {} in zone \"{}\"{}",
            outcome,
            zone_name,
            if dry_run { ", dry run" } else { "" }
        );
    }

    let decision = Decision {
        outcome,
        dry_run,
        seq: verdict.permit.map_or(0, |held| held.seq),
        expires_ms: verdict.permit.and_then(|held| held.expires_ms),
        zone: zone_ptr,
        key: key.as_ptr(),
        key_len: key.len(),
    };
    // SAFETY: `r` is live.
    if unsafe { record(r, decision) }.is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    if outcome.passes() || dry_run {
        return NGX_DECLINED as ngx_int_t;
    }
    let retry_after = matches!(outcome, Outcome::NotStarted | Outcome::Prequeued)
        .then(|| sale.window.seconds_to_start(now));
    let status = outcome.status(lcf.reject_status());
    // SAFETY: `r` is live and nothing has been sent yet.
    unsafe { reject(r, status, outcome.message(), retry_after) }
}

/// The buyer's key: the zone's key expression evaluated for this request; `None` on an error.
///
/// # Safety
/// `r` is a live request; the key lives in its memory.
pub unsafe fn request_key<'r>(r: *mut ngx_http_request_t, zone: &ZoneConf) -> Option<&'r [u8]> {
    match zone.key_var {
        // SAFETY: the index came from ngx_http_get_variable_index for this configuration.
        Some(index) => match unsafe { ngx_http_get_flushed_variable(r, index).as_ref() } {
            Some(value) if value.not_found() == 0 => Some(value.as_bytes()),
            Some(_) => Some(&[]),
            None => None,
        },
        None => {
            // SAFETY: `r` is live.
            let req = unsafe { Request::from_ngx_http_request(r) };
            let value = req.get_complex_value(&zone.key)?.as_bytes();
            // SAFETY: the value lives in the request's pool, as long as the request.
            Some(unsafe { core::slice::from_raw_parts(value.as_ptr(), value.len()) })
        }
    }
}

thread_local! {
    /// Each worker seeds its own generator on first use, after the fork, so workers never
    /// share a sequence.
    static DRAW_RNG: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// A uniform number in [0, 1) for the draw.
fn draw() -> f64 {
    DRAW_RNG.with(|cell| {
        let mut rng = cell.borrow_mut();
        rng.get_or_insert_with(|| {
            SmallRng::try_from_os_rng().unwrap_or_else(|_| {
                let tp = ngx_timeofday();
                SmallRng::seed_from_u64((tp.sec as u64) << 20 ^ u64::from(std::process::id()))
            })
        })
        .random()
    })
}

/// The decision taken for a request. It is kept in a pool cleanup entry because internal
/// redirects wipe module contexts but not the pool; nginx's realip module does the same.
#[derive(Clone, Copy)]
pub struct Decision {
    pub outcome: Outcome,
    /// The outcome was a rejection that `flash_sale_dry_run` let pass.
    pub dry_run: bool,
    /// The permit's number when the request passed with one; 0 otherwise.
    pub seq: u64,
    /// When that permit expires, if it does.
    pub expires_ms: Option<i64>,
    /// The zone that decided, and the key, which lives in the request's memory as long as the
    /// request (for `flash_sale_release_header`).
    pub zone: NonNull<ZoneConf>,
    key: *const u8,
    key_len: usize,
}

impl Decision {
    /// A passing decision for `key` (which lives in the request's memory) with its permit.
    pub fn passed(outcome: Outcome, held: Held, zone: NonNull<ZoneConf>, key: &[u8]) -> Decision {
        Decision {
            outcome,
            dry_run: false,
            seq: held.seq,
            expires_ms: held.expires_ms,
            zone,
            key: key.as_ptr(),
            key_len: key.len(),
        }
    }

    /// The key the request was decided with.
    ///
    /// # Safety
    /// The request the decision belongs to is live.
    pub unsafe fn key(&self) -> &[u8] {
        // SAFETY: the key's memory belongs to the request (see the field).
        unsafe { core::slice::from_raw_parts(self.key, self.key_len) }
    }
}

/// Marks our cleanup entry; there is nothing to clean up.
unsafe extern "C" fn decision_marker(_data: *mut c_void) {}

fn is_decision(handler: nginx_sys::ngx_pool_cleanup_pt) -> bool {
    handler.map(|h| h as *const ()) == Some(decision_marker as *const ())
}

/// # Safety
/// `r` is a live request.
pub unsafe fn record(r: *mut ngx_http_request_t, decision: Decision) -> Option<()> {
    // SAFETY: the cleanup entry and its data live as long as the request's pool.
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, size_of::<Decision>()).as_mut()?;
        let data = cln.data.cast::<Decision>();
        data.write(decision);
        cln.handler = Some(decision_marker);
        *(*r).ctx.add(crate::conf::ctx_index()) = data.cast();
    }
    Some(())
}

/// The decision taken for this request, if any, also after an internal redirect.
///
/// # Safety
/// `r` is a live request.
pub unsafe fn recorded(r: *mut ngx_http_request_t) -> Option<Decision> {
    let index = crate::conf::ctx_index();
    // SAFETY: `ctx` has a slot per http module; ours holds null or a `Decision`, and the pool's
    // cleanup list is null-terminated.
    unsafe {
        let slot = (*r).ctx.add(index);
        if let Some(decision) = (*slot).cast::<Decision>().as_ref() {
            return Some(*decision);
        }
        // Only an internal redirect loses a context; a fresh request has nothing to find.
        if (*r).internal() == 0 {
            return None;
        }
        let mut cln = (*(*r).pool).cleanup;
        while let Some(entry) = cln.as_ref() {
            if is_decision(entry.handler) {
                *slot = entry.data;
                return Some(*entry.data.cast::<Decision>());
            }
            cln = entry.next;
        }
    }
    None
}

/// Answers a rejection: the status, `Cache-Control: no-store`, `Retry-After` when given (the
/// seconds to the start), and either the location's `error_page` for that status or the
/// one-line plain-text `message`. A status nginx answers by closing the connection (444, 408,
/// 499) is handed to nginx as `limit_req` hands it, and nothing is sent.
///
/// # Safety
/// `r` is a live request whose response has not started.
pub unsafe fn reject(
    r: *mut ngx_http_request_t,
    status: u16,
    message: &'static str,
    retry_after: Option<i64>,
) -> ngx_int_t {
    if Outcome::closes_connection(status) {
        return status as ngx_int_t;
    }
    // SAFETY: see the function's contract.
    unsafe {
        if ngx_http_discard_request_body(r) != NGX_OK as ngx_int_t {
            (*r).set_keepalive(0);
        }
        let headers = add_header(r, "Cache-Control", ngx_string!("no-store")).and_then(|()| {
            let Some(seconds) = retry_after else {
                return Some(());
            };
            let seconds = seconds.to_string();
            add_header(r, "Retry-After", ngx_str_t::from_bytes((*r).pool, seconds.as_bytes())?)
        });
        if headers.is_none() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        if has_error_page(r, status) {
            // nginx's special response handler performs the redirect to the error page.
            return status as ngx_int_t;
        }
        let rc = send(r, status, ngx_string!("text/plain"), Body::Static(message));
        // The phase checker would take NGX_OK as "go on to the content phase": finalize here.
        ngx_http_finalize_request(r, rc);
        NGX_DONE as ngx_int_t
    }
}

/// Whether nginx would answer `status` here with an `error_page`, by its own rules.
///
/// # Safety
/// `r` is a live request.
unsafe fn has_error_page(r: *mut ngx_http_request_t, status: u16) -> bool {
    // SAFETY: see the function's contract.
    let req = unsafe { &*r };
    if req.error_page() != 0 || req.uri_changes() == 0 {
        return false;
    }
    // SAFETY: `r` is live.
    let Some(clcf) = NgxHttpCoreModule::location_conf(unsafe { Request::from_ngx_http_request(r) })
    else {
        return false;
    };
    // SAFETY: `error_pages`, when set, is an array of `ngx_http_err_page_t`.
    let Some(pages) = (unsafe { clcf.error_pages.as_ref() }) else {
        return false;
    };
    // SAFETY: as above.
    unsafe { pages.as_slice::<ngx_http_err_page_t>() }
        .iter()
        .any(|page| page.status == status as ngx_int_t)
}
