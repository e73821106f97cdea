//! The precontent-phase handler: evaluates the key, runs the decision against the zone, and
//! answers rejections.
//!
//! It runs after the access phase, so requests refused by `limit_req`, `limit_conn`,
//! `allow`/`deny`, `auth_basic` or `auth_request` never draw and never take a permit.

use core::cell::RefCell;
use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::NonNull;

use nginx_sys::{
    ngx_array_push, ngx_conf_t, ngx_http_complex_value_t, ngx_http_discard_request_body,
    ngx_http_err_page_t, ngx_http_finalize_request, ngx_http_get_flushed_variable,
    ngx_http_handler_pt, ngx_http_output_header_filter_pt,
    ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE as PRECONTENT_PHASE, ngx_http_request_t,
    ngx_http_top_header_filter, ngx_int_t, ngx_list_part_t, ngx_pool_cleanup_add, ngx_str_t,
    ngx_table_elt_t, ngx_timeofday, NGX_DECLINED, NGX_DONE, NGX_ERROR, NGX_HTTP_FORBIDDEN,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule, Request};
use ngx::{ngx_log_debug_http, ngx_log_error, ngx_string};
use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::conf::{Gate, LocConf, Verify, ZoneConf};
use crate::http::{add_header, now_ms, send, Body};
use crate::module::{self, FlashSaleModule};
use crate::redis_gate;
use crate::sale::PermitInfo;
use crate::sale::{decide, DrawMode, Outcome, Sale, Verdict, MAX_KEY_LEN};
use crate::state;
use crate::token;
use crate::zone::{keyed_draw, Stats, ZoneStore};

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
            NEXT_HEADER_FILTER = ngx_http_top_header_filter;
            ngx_http_top_header_filter = Some(release_filter);
        }
        NGX_OK as ngx_int_t
    })
}

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;

/// `flash_sale_release_header`: a backend's answer with that header revokes the buyer's permit.
unsafe extern "C" fn release_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request whose headers are about to be sent.
    crate::ffi::guard((), || unsafe { release(r) });
    // SAFETY: the next filter was set at postconfiguration, before any request; `r` is live.
    unsafe {
        match NEXT_HEADER_FILTER {
            Some(next) => next(r),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

/// # Safety
/// `r` is a live request whose headers have not been sent.
unsafe fn release(r: *mut ngx_http_request_t) {
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    if !req.is_main() || req.upstream().is_none() {
        return;
    }
    let Some(name) = FlashSaleModule::location_conf(req).and_then(|lcf| lcf.release_header) else {
        return;
    };
    // Only the backend's header counts: it is removed before the client sees it.
    let mut found = false;
    // SAFETY: the output header list holds `ngx_table_elt_t` in null-terminated parts.
    unsafe {
        let mut part: *mut ngx_list_part_t = &mut (*r).headers_out.headers.part;
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
    // SAFETY: `r` is live.
    let Some(decision) = (unsafe { recorded(r) }) else {
        return;
    };
    if !found || !decision.outcome.passes() {
        return;
    }
    // SAFETY: zone configurations live as long as the cycle; the key as long as the request.
    let (zone, key) = unsafe { (decision.zone.as_ref(), decision.key()) };
    let (Some(table), Some(slab)) = (zone.table, zone.slab()) else {
        return;
    };
    // SAFETY: `table` was created in this zone's slab pool by `init_zone`.
    let revoked = unsafe { ZoneStore::new(&slab, table, now_ms()) }.revoke(key);
    if let Some(seq) = revoked {
        zone.journal(|| state::revoke(seq), req.log());
    }
    if !redis_gate::release(zone, key) {
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
    let Some(lcf) = FlashSaleModule::location_conf(req) else {
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
        return unsafe { redis_gate::gate(r, lcf, zone_ptr, key) };
    }
    let (Some(table), Some(slab)) = (zone.table, zone.slab()) else {
        return SERVER_ERROR;
    };

    let now = now_ms();
    // SAFETY: `table` was created in this zone's slab pool by `init_zone`.
    let mut store = unsafe { ZoneStore::new(&slab, table, now) }
        .with_ttl(lcf.permit_ttl_ms)
        .with_numbers(zone.numbers());
    let sale = store.table().overrides.apply(lcf.sale());
    let draw = drawer(lcf, store.table().draw_secret(), key, now);
    let mut verdict = decide(&sale, key, now, draw, &mut store);

    let log = req.log();
    let settled = store.take_settled();
    if !settled.is_empty() {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "flash sale: the pre-queue's draw gave {} permits in zone \"{}\"",
            settled.len(),
            zone.name()
        );
        for permit in &settled {
            zone.journal(|| state::grant(permit), log);
        }
    }
    if let (Outcome::Admitted, Some(held)) = (verdict.outcome, verdict.permit) {
        // The record is only built when the zone has a state file.
        let permit = || PermitInfo {
            key: key.to_vec(),
            seq: held.seq,
            granted_ms: now,
            expires_ms: held.expires_ms,
        };
        // A buyer is told ADMITTED only once his permit is on disk: if the state file cannot
        // take it, the admission is undone and he is told UNAVAILABLE, as with Redis away.
        if !zone.journal(|| state::grant(&permit()), log) {
            store.undo(key, held.seq);
            if let Some(file) = &zone.state {
                file.give_back(held.seq);
            }
            verdict = Outcome::Unavailable.into();
        }
    }
    if store.newly_full() {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "flash_sale_zone \"{}\" is full with {} permits; new buyers get SOLD_OUT",
            zone.name(),
            store.permits()
        );
    }
    let g = Gated { r, lcf, zone: zone_ptr, key, now, sale };
    // SAFETY: `r` is live, in its precontent phase.
    unsafe { conclude(&g, verdict) }
}

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
    if let Some(table) = zone.table {
        // SAFETY: the table lives in the zone's shared memory; its counters are atomics.
        Stats::count(&unsafe { table.as_ref() }.stats.requests[outcome.counter(dry_run)]);
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

/// `flash_sale_verify`: passes a request whose token is a valid permit of `zone` for its own
/// key, and answers 403 with the reason otherwise.
///
/// # Safety
/// `r` is a live main request in its precontent phase; `zone` and `token` belong to its
/// location's configuration.
unsafe fn verify(
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
    if let Some(table) = zone.table {
        // SAFETY: the table lives in the zone's shared memory; its counters are atomics.
        let stats = unsafe { &table.as_ref().stats };
        Stats::count(if checked.is_ok() { &stats.tokens_valid } else { &stats.tokens_refused });
    }
    let refusal = match checked {
        Ok((seq, expires_ms)) => {
            let outcome = Outcome::Permitted;
            let (key, key_len) = (key.as_ptr(), key.len());
            let decision =
                Decision { outcome, dry_run: false, seq, expires_ms, zone: zone_ptr, key, key_len };
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
unsafe fn record(r: *mut ngx_http_request_t, decision: Decision) -> Option<()> {
    // SAFETY: the cleanup entry and its data live as long as the request's pool.
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, size_of::<Decision>()).as_mut()?;
        let data = cln.data.cast::<Decision>();
        data.write(decision);
        cln.handler = Some(decision_marker);
        *(*r).ctx.add(module::module().ctx_index) = data.cast();
    }
    Some(())
}

/// The decision taken for this request, if any, also after an internal redirect.
///
/// # Safety
/// `r` is a live request.
pub unsafe fn recorded(r: *mut ngx_http_request_t) -> Option<Decision> {
    let index = module::module().ctx_index;
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
unsafe fn reject(
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
