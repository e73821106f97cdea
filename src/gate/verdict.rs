//! What every path through the gate shares: the request's key, the draw, and the
//! conclusion: counting, logging and recording the verdict, and answering a rejection.

use core::cell::RefCell;
use core::ffi::c_void;
use core::sync::atomic::AtomicBool;
use std::borrow::Cow;

use nginx_sys::{
    ngx_http_err_page_t, ngx_http_get_flushed_variable, ngx_timeofday, ngx_uint_t, NGX_LOG_ERR,
    NGX_LOG_WARN,
};
use ngx::core::Status;
use ngx::http::{HTTPStatus, HttpModuleLocationConf, NgxHttpCoreModule, Request};
use ngx::{ngx_log_debug_http, ngx_log_error, ngx_string};
use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::conf::{LocConf, Stock, Value, ZoneConf, ZoneRef};
use crate::ffi::Next;
use crate::http::{accept, add_header, keep, kept, pool_number, send_as, static_str, Body, Kept};
use crate::page::{self, Figures, Words};
use crate::sale::{
    DrawMode, Held, Outcome, PermitKey, Sale, Verdict, Waiting, MAX_ITEM_LEN, MAX_KEY_LEN,
};
use crate::zone::{keyed_draw, Stats};

/// What every step of a request's decision reads.
pub struct Gated<'r> {
    pub lcf: &'r LocConf,
    pub zone: ZoneRef,
    /// The buyer's key and the item, in the request's memory.
    pub key: PermitKey<'r>,
    pub now: i64,
    /// The location's sale with the zone's overrides applied.
    pub sale: Sale,
}

/// The draw for this location's mode: a fresh number per request, or the key's number for
/// the round, with `secret` (the zone's, or the sale's shared through Redis).
pub fn drawer<'a>(
    lcf: &LocConf,
    secret: [u64; 2],
    key: PermitKey<'a>,
    now: i64,
) -> impl FnOnce() -> f64 + 'a {
    let mode = lcf.draw.unwrap_or_default();
    move || match mode {
        DrawMode::PerRequest => draw(),
        DrawMode::PerKey { .. } => keyed_draw(secret, key, mode.round(now)),
    }
}

/// Counts, logs and records the verdict on a main request in its precontent phase, and
/// answers a rejection; returns what the phase handler returns.
pub fn conclude(req: &mut Request, g: &Gated<'_>, verdict: Verdict) -> Next {
    let Gated { lcf, zone, key, now, ref sale } = *g;
    let outcome = verdict.outcome;
    let dry_run = lcf.dry_run();
    if let Some(table) = zone.table_ref() {
        Stats::count(&table.stats.requests[outcome.counter(dry_run)]);
    }
    let log = req.log();
    let zone_name = zone.name();
    let too_long = match outcome {
        Outcome::KeyTooLong => Some(("key", key.key.len(), MAX_KEY_LEN)),
        Outcome::ItemTooLong => Some(("item", key.item.len(), MAX_ITEM_LEN)),
        _ => None,
    };
    if let Some((what, len, most)) = too_long {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash sale {} of {} bytes is longer than {} bytes, refused",
            what,
            len,
            most
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
        waiting: verdict.waiting,
        zone,
        key: key.key.as_ptr(),
        key_len: key.key.len(),
        item: key.item.as_ptr(),
        item_len: key.item.len(),
    };
    if record(req, decision).is_none() {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    }
    if outcome.passes() || dry_run {
        return Status::NGX_DECLINED.into();
    }
    let mut figures = Figures::of(outcome, &sale.window, now);
    if let (Some(queue), Some(waiting)) = (sale.queue, verdict.waiting) {
        figures.position = Some(waiting.position);
        figures.wait_seconds = Some(waiting.wait_seconds);
        figures.retry_after = Some(queue.retry_after(waiting.wait_seconds, draw()));
    }
    let status = outcome.status(lcf.reject_status());
    reject(req, status, &Words::of(outcome), &figures)
}

/// What `value`, a value with variables of the configuration, evaluates to for this request
/// (a variable not found: empty); `None` on an error. It lives in the request's memory, as
/// long as the request: not tied to this borrow.
pub fn evaluate<'r>(req: &mut Request, value: Value) -> Option<&'r [u8]> {
    let bytes = match value.variable {
        // SAFETY: the index came from ngx_http_get_variable_index for this configuration.
        Some(index) => match unsafe { ngx_http_get_flushed_variable(req.into(), index).as_ref() } {
            Some(found) if found.not_found() == 0 => found.as_bytes(),
            Some(_) => &[],
            None => return None,
        },
        // SAFETY: the complex value was compiled for this configuration, which outlives
        // requests.
        None => req.get_complex_value(unsafe { value.complex.as_ref() })?.as_bytes(),
    };
    // SAFETY: the value lives in the request's pool (or is static), as long as the request.
    Some(unsafe { core::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) })
}

/// The request's item (`flash_sale_item`; empty without it); `None` on an error.
pub fn request_item<'r>(req: &mut Request, lcf: &LocConf) -> Option<&'r [u8]> {
    match lcf.item {
        Some(value) => evaluate(req, value),
        None => Some(&[]),
    }
}

/// The location's sale for this request, with the zone's overrides applied: the cap read from
/// its variables (`flash_sale_max_permits $stock`); `None`, logged, when they are not a whole
/// number (a `map` without the item and without a default): the request is refused rather
/// than sold without a cap, or with a cap of 0.
pub fn request_sale(
    req: &mut Request,
    lcf: &LocConf,
    zone: ZoneRef,
    key: PermitKey<'_>,
) -> Option<Sale> {
    let mut sale = lcf.sale();
    if let Some(Stock::Variable(value)) = lcf.max_permits {
        let text = evaluate(req, value)?;
        let cap = core::str::from_utf8(text).ok().and_then(crate::parse::cap);
        let Some(cap) = cap else {
            ngx_log_error!(
                NGX_LOG_ERR,
                req.log(),
                "\"flash_sale_max_permits\" is \"{}\" for item \"{}\" in zone \"{}\", not a whole \
                 number of permits; the request is refused",
                String::from_utf8_lossy(text),
                String::from_utf8_lossy(key.item),
                zone.name()
            );
            return None;
        };
        sale.cap = Some(cap);
    }
    Some(zone.table_ref().map_or(sale, |table| table.overrides.load().apply(sale)))
}

/// The buyer's key: the zone's key expression evaluated for this request; `None` on an error.
/// It lives in the request's memory, as long as the request: not tied to this borrow.
pub fn request_key<'r>(req: &mut Request, zone: &ZoneConf) -> Option<&'r [u8]> {
    evaluate(req, zone.key)
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
    /// For QUEUED: the place in line and the wait.
    pub waiting: Option<Waiting>,
    /// The zone that decided, and the key and item, which live in the request's memory as
    /// long as the request (for `flash_sale_release_header` and `$flash_sale_token`).
    pub zone: ZoneRef,
    key: *const u8,
    key_len: usize,
    item: *const u8,
    item_len: usize,
}

impl Decision {
    /// A passing decision for `key` (which lives in the request's memory) with its permit.
    pub fn passed(outcome: Outcome, held: Held, zone: ZoneRef, key: PermitKey<'_>) -> Decision {
        Decision {
            outcome,
            dry_run: false,
            seq: held.seq,
            expires_ms: held.expires_ms,
            waiting: None,
            zone,
            key: key.key.as_ptr(),
            key_len: key.key.len(),
            item: key.item.as_ptr(),
            item_len: key.item.len(),
        }
    }

    /// The key and item the request was decided with.
    ///
    /// # Safety
    /// The request the decision belongs to is live.
    pub unsafe fn key(&self) -> PermitKey<'_> {
        // SAFETY: the key's and the item's memory belong to the request (see the field).
        unsafe {
            PermitKey {
                key: core::slice::from_raw_parts(self.key, self.key_len),
                item: core::slice::from_raw_parts(self.item, self.item_len),
            }
        }
    }
}

impl Kept for Decision {
    const CLEANUP: unsafe extern "C" fn(*mut c_void) = decision_marker;
}

/// Marks the cleanup entry that keeps a decision; there is nothing to clean up. Its address
/// names such entries (see [`Kept`]), so it touches a static of its own: an empty function
/// would be folded by the compiler into others with the same code, such as the pool cleanups
/// of types with nothing to drop (seen in a release build).
unsafe extern "C" fn decision_marker(_data: *mut c_void) {
    static MARKED: AtomicBool = AtomicBool::new(false);
    // SAFETY: the flag is only ever written, and only here, on the worker's event thread; a
    // volatile write is one the compiler keeps.
    unsafe { core::ptr::write_volatile(MARKED.as_ptr(), true) };
}

/// Keeps the decision with the request, for its variables, its release and its internal
/// redirects; `None` when nginx cannot allocate.
pub fn record(req: &mut Request, decision: Decision) -> Option<()> {
    let kept = keep(req, decision)?;
    set_context(req, kept.as_ptr());
    Some(())
}

/// The decision taken for this request, if any, also after an internal redirect.
pub fn recorded(req: &mut Request) -> Option<Decision> {
    let slot = crate::conf::ctx_index();
    // SAFETY: `ctx` has a slot per http module; ours holds null or a kept `Decision`.
    if let Some(decision) = unsafe { (*req.as_ref().ctx.add(slot)).cast::<Decision>().as_ref() } {
        return Some(*decision);
    }
    // Only an internal redirect loses a context; a fresh request has nothing to find.
    if !crate::flags::internal(req.as_ref()) {
        return None;
    }
    let decision: *const Decision = kept::<Decision>(req)?;
    // The context again, for the next reader.
    set_context(req, decision.cast_mut());
    // SAFETY: a kept decision lives as long as the request.
    Some(unsafe { *decision })
}

/// Points the module's context of the request at its kept decision.
fn set_context(req: &mut Request, decision: *mut Decision) {
    let slot = crate::conf::ctx_index();
    // SAFETY: `ctx` has a slot per http module; ours is for the decision.
    unsafe { *req.as_mut().ctx.add(slot) = decision.cast() };
}

/// Answers a rejection: the status, `Cache-Control: no-store`, `Retry-After` when the figures
/// have one, and either the location's `error_page` for that status or, with `Vary: Accept`,
/// the `words` and `figures` in the representation the request's `Accept` prefers (the
/// one-line text, the HTML page or the JSON). A status nginx answers by closing the
/// connection (444, 408, 499) is handed to nginx as `limit_req` hands it, and nothing is sent.
/// For a request whose response has not started.
pub fn reject(req: &mut Request, status: u16, words: &Words, figures: &Figures) -> Next {
    let code = Next::from(HTTPStatus(ngx_uint_t::from(status)));
    if Outcome::closes_connection(status) {
        return code;
    }
    if !req.discard_request_body().is_ok() {
        crate::flags::set_keepalive(req.as_mut(), false);
    }
    let retry_after = match figures.retry_after.map(|seconds| pool_number(req, seconds)) {
        Some(None) => return HTTPStatus::INTERNAL_SERVER_ERROR.into(),
        Some(copy) => copy,
        None => None,
    };
    let headers = add_header(req, "Cache-Control", ngx_string!("no-store"))
        .and_then(|()| retry_after.map_or(Some(()), |value| add_header(req, "Retry-After", value)));
    if headers.is_none() {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    }
    if has_error_page(req, status) {
        // nginx's special response handler performs the redirect to the error page.
        return code;
    }
    if add_header(req, "Vary", ngx_string!("Accept")).is_none() {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    }
    let representation = page::negotiate(accept(req));
    let media_type = static_str(representation.mime());
    let charset = representation.charset().map(static_str);
    let rc = match page::render(words, figures, representation) {
        Cow::Borrowed(text) => send_as(req, status, media_type, charset, Body::Static(text)),
        Cow::Owned(text) => send_as(req, status, media_type, charset, Body::Copied(&text)),
    };
    // The phase checker would take NGX_OK as "go on to the content phase": finalize instead.
    Next::Finalize(rc)
}

/// Whether nginx would answer `status` here with an `error_page`, by its own rules.
fn has_error_page(req: &Request, status: u16) -> bool {
    if crate::flags::error_page(req.as_ref()) || crate::flags::uri_changes(req.as_ref()) == 0 {
        return false;
    }
    let Some(clcf) = NgxHttpCoreModule::location_conf(req) else {
        return false;
    };
    // SAFETY: `error_pages`, when set, is an array of `ngx_http_err_page_t`.
    let Some(pages) = (unsafe { clcf.error_pages.as_ref() }) else {
        return false;
    };
    // SAFETY: as above.
    unsafe { pages.as_slice::<ngx_http_err_page_t>() }
        .iter()
        .any(|page| u16::try_from(page.status) == Ok(status))
}
