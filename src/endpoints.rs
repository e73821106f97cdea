//! HTTP endpoints of the module: `flash_sale_metrics` (Prometheus text) and `flash_sale_api`
//! (JSON over the zones). Parsing and JSON are in `api.rs` and `metrics.rs`; this file reads
//! requests, touches the zones and sends answers.

use core::ffi::{c_char, c_void};
use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_discard_request_body, ngx_http_finalize_request,
    ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t, ngx_pagesize, ngx_str_t,
    NGX_DONE, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_SPECIAL_RESPONSE,
    NGX_OK,
};
use ngx::core::{SlabPool, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HttpModuleLocationConf, Method, NgxHttpCoreModule, Request};
use ngx::ngx_string;

use serde_json::{json, Value};

use crate::api::{self, route, ApiError, Route};
use crate::conf::{MainConf, ZoneConf};
use crate::gate::redis as redis_gate;
use crate::http::{add_header, send, Body};
use crate::metrics::{render, ZoneMetrics};
use crate::offload;
use crate::remote::{Command, Failure, Reply};
use crate::sale::{Outcome, OverridesPatch};
use crate::state;
use crate::zone::{Stats, ZoneStore};

/// `flash_sale_metrics;` makes the location answer with the metrics.
pub unsafe extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    crate::ffi::guard(NGX_CONF_ERROR, || {
        // SAFETY: called by nginx as a location directive handler.
        unsafe { set_content_handler(cf, metrics_handler) }
    })
}

/// Makes the location being parsed answer with `handler`.
///
/// # Safety
/// `cf` is the configuration nginx passes to a location directive handler.
unsafe fn set_content_handler(
    cf: *mut ngx_conf_t,
    handler: unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t,
) -> *mut c_char {
    // SAFETY: `cf` is the location's configuration context while it is parsed.
    match NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) {
        Some(clcf) => {
            clcf.handler = Some(handler);
            NGX_CONF_OK
        }
        None => NGX_CONF_ERROR,
    }
}

unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request in its content phase.
    crate::ffi::guard(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || unsafe { metrics(r) })
}

/// # Safety
/// `r` is a live request in its content phase.
unsafe fn metrics(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    // SAFETY: as above.
    if !reading(&req.method()) {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: as above.
    if unsafe { ngx_http_discard_request_body(r) } != NGX_OK as ngx_int_t {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    let Some(main) = MainConf::of(req) else {
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

/// `flash_sale_api;` makes the location answer the admin API.
pub unsafe extern "C" fn set_api(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    crate::ffi::guard(NGX_CONF_ERROR, || {
        // SAFETY: called by nginx as a location directive handler.
        unsafe { set_content_handler(cf, api_handler) }
    })
}

const METHODS_ZONES: &str = "GET, HEAD";
const METHODS_ZONE: &str = "GET, HEAD, PATCH";
const METHODS_PERMITS: &str = "GET, HEAD, POST, DELETE";
const METHODS_PERMIT: &str = "GET, HEAD, DELETE";

unsafe extern "C" fn api_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request in its content phase.
    crate::ffi::guard(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || unsafe { api(r) })
}

/// # Safety
/// `r` is a live request in its content phase.
unsafe fn api(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: see the function's contract.
    let (method, route) = unsafe { (Request::from_ngx_http_request(r).method(), request_route(r)) };
    let route = match route {
        Ok(route) => route,
        // SAFETY: as above.
        Err(e) => return unsafe { discard_and_answer(r, Err(e)) },
    };
    let with_body = match &route {
        Route::Permits(_) => method == Method::POST,
        Route::Zone(_) => method == Method::PATCH,
        _ => false,
    };
    if with_body || method == Method::DELETE {
        // SAFETY: as above.
        let req = unsafe { Request::from_ngx_http_request(r) };
        if let Err(e) = api::check_sender(&sender(req), with_body) {
            // SAFETY: as above.
            return unsafe { discard_and_answer(r, Err(e)) };
        }
    }
    if with_body {
        // SAFETY: as above; the body lands in memory, in one buffer, where it fits.
        unsafe {
            (*r).set_request_body_in_single_buf(1);
            let rc = ngx_http_read_client_request_body(r, Some(api_body_ready));
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
        }
        return NGX_DONE as ngx_int_t;
    }
    // SAFETY: as above.
    match unsafe { on_redis(r, &method, &route, None) } {
        Some(Ok((zone, command))) => {
            // SAFETY: as above.
            unsafe { ask_redis(r, zone, command) }
        }
        // SAFETY: as above.
        Some(Err(e)) => unsafe { discard_and_answer(r, Err(e)) },
        // SAFETY: as above.
        None => unsafe { discard_and_answer(r, serve(r, &method, &route, None)) },
    }
}

/// For a zone kept in Redis, the command a permit route runs there; `None` for a zone kept
/// here, for a route that reads or changes this host's zone only, and for a grant whose body
/// is not read yet.
///
/// # Safety
/// `r` is a live request.
unsafe fn on_redis(
    r: *mut ngx_http_request_t,
    method: &Method,
    route: &Route,
    body: Option<&[u8]>,
) -> Option<Result<(&'static ZoneConf, Command), ApiError>> {
    let (name, key) = match route {
        Route::Permits(name) => (name, None),
        Route::Permit(name, key) => (name, Some(key)),
        Route::Zone(name) if *method == Method::PATCH => {
            // SAFETY: see the function's contract.
            let zone = unsafe { zone_named(r, name) }?;
            zone.redis?;
            return Some(
                override_changes(zone, body?).map(|patch| (zone, Command::SetOverrides { patch })),
            );
        }
        _ => return None,
    };
    // SAFETY: see the function's contract.
    let zone = unsafe { zone_named(r, name) }?;
    zone.redis?;
    let get = reading(method);
    let now_ms = crate::http::now_ms();
    let command = match key {
        Some(key) if get => Ok(Command::Get { key: key.clone(), now_ms }),
        Some(key) if *method == Method::DELETE => Ok(Command::Revoke { key: key.clone() }),
        None if *method == Method::DELETE => Ok(Command::Clear),
        // The page is checked here, so that a bad one costs no round trip.
        None if get => api::page(req_args(r)).map(|_| Command::Permits { now_ms }),
        None if *method == Method::POST => {
            api::grants(body?).map(|grants| Command::Grant { grants, now_ms })
        }
        _ => return None,
    };
    Some(command.map(|command| (zone, command)))
}

/// A PATCH's changes to a zone kept in Redis; checked here, against the overrides this host
/// has, so that a bad one costs no round trip.
fn override_changes(zone: &ZoneConf, body: &[u8]) -> Result<OverridesPatch, ApiError> {
    let patch = api::patch(body)?;
    let here = zone.table_ref().map(|table| table.overrides.load()).unwrap_or_default();
    api::patched(&here, &patch)?;
    Ok(patch)
}

/// The zone of this name, as the request's configuration declares it.
///
/// # Safety
/// `r` is a live request.
unsafe fn zone_named(r: *mut ngx_http_request_t, name: &str) -> Option<&'static ZoneConf> {
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let main = MainConf::of(req)?;
    // SAFETY: zone configurations live in the cycle's pool, as long as any request of it.
    main.zones
        .iter()
        .map(|z| unsafe { &*z.as_ptr() })
        .find(|z| z.name().as_bytes() == name.as_bytes())
}

/// Runs an API command on Redis, with the request waiting; [`redis_answered`] answers.
///
/// # Safety
/// `r` is a live request in its content phase; `zone` is kept in Redis.
unsafe fn ask_redis(r: *mut ngx_http_request_t, zone: &ZoneConf, command: Command) -> ngx_int_t {
    const SERVER_ERROR: ngx_int_t = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    let Some(redis) = zone.redis() else {
        return SERVER_ERROR;
    };
    // SAFETY: see the function's contract.
    unsafe {
        if ngx_http_discard_request_body(r) != NGX_OK as ngx_int_t {
            return SERVER_ERROR;
        }
        let name = zone.name().to_string();
        if let Err((_, failure)) =
            offload::post(r, redis.threads, &redis.settings, name, command, redis_answered)
        {
            // Not queued: answered at once, as Redis failing to answer.
            return redis_answer(r, Err(failure));
        }
        // The answer finalizes the request once more.
        let main = &mut *(*r).main;
        main.set_count(main.count() + 1);
    }
    NGX_DONE as ngx_int_t
}

/// Finishes an API request `ask_redis` left waiting, with Redis's reply.
///
/// # Safety
/// `r` is the live request `ask_redis` left waiting.
unsafe fn redis_answered(
    r: *mut ngx_http_request_t,
    _command: &Command,
    reply: Result<Reply, Failure>,
    _asked_ms: i64,
) {
    // SAFETY: see the function's contract.
    let rc = crate::ffi::guard(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || unsafe {
        redis_answer(r, reply)
    });
    // SAFETY: as above; this is the finalization `ask_redis` counted.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// Answers an API request with Redis's reply (a failure: 502 with its JSON reason); a
/// revocation is applied to this host's cache too, so that it is seen here at once.
///
/// # Safety
/// `r` is a live API request in its content phase.
unsafe fn redis_answer(r: *mut ngx_http_request_t, reply: Result<Reply, Failure>) -> ngx_int_t {
    // SAFETY: see the function's contract.
    unsafe {
        let (zone, key) = match request_route(r) {
            Ok(Route::Permit(name, key)) => (zone_named(r, &name), key),
            Ok(Route::Permits(name) | Route::Zone(name)) => (zone_named(r, &name), Vec::new()),
            _ => (None, Vec::new()),
        };
        let answer = match zone {
            Some(zone) if matches!(reply, Ok(Reply::Overrides(_))) => {
                if let Ok(Reply::Overrides(overrides)) = &reply {
                    redis_gate::apply_overrides(zone, overrides);
                }
                apply_here(zone, &key, &reply);
                zone_json(zone).map(|json| (200, json)).ok_or_else(unavailable)
            }
            Some(zone) => {
                apply_here(zone, &key, &reply);
                let cap = zone
                    .table
                    .and_then(|t| t.as_ref().overrides.load().max_permits)
                    .or(zone.largest_cap);
                let page = api::page(req_args(r)).ok();
                let ask = api::RemoteAsk { key, page, cap, kind: key_kind(zone) };
                match reply {
                    Ok(reply) => api::remote_answer(&ask, reply),
                    Err(e) => Err(ApiError::new(502, format!("redis did not answer: {e}"))),
                }
            }
            None => Err(ApiError::new(500, "the zone is not available")),
        };
        respond(r, answer)
    }
}

/// Counts a round trip, and applies a revocation to this host's cache of permits.
fn apply_here(zone: &ZoneConf, key: &[u8], reply: &Result<Reply, Failure>) {
    let Some(mut store) = zone.store(crate::http::now_ms()) else {
        return;
    };
    let stats = &store.table().stats;
    Stats::count(&stats.redis_calls);
    match reply {
        Ok(Reply::Revoked(Some(_))) => {
            store.forget(key);
            Stats::count(&stats.revoked);
        }
        Ok(Reply::Cleared(n)) => {
            // `clear` counts the permits known here; Redis knows them all.
            let here = store.clear();
            stats.revoked.fetch_add(n.saturating_sub(here), core::sync::atomic::Ordering::Relaxed);
        }
        Err(failure) => stats.redis_failed(failure.index()),
        _ => {}
    }
}

/// Whether a request only reads (GET, HEAD).
fn reading(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// The headers that tell where a request comes from, for [`api::check_sender`].
fn sender(req: &Request) -> api::Sender<'_> {
    let mut sender = api::Sender::default();
    for (name, value) in req.headers_in_iterator() {
        let name = name.as_bytes();
        let slot = if name.eq_ignore_ascii_case(b"host") {
            &mut sender.host
        } else if name.eq_ignore_ascii_case(b"origin") {
            &mut sender.origin
        } else if name.eq_ignore_ascii_case(b"sec-fetch-site") {
            &mut sender.fetch_site
        } else if name.eq_ignore_ascii_case(b"content-type") {
            &mut sender.content_type
        } else {
            continue;
        };
        slot.get_or_insert(value.as_bytes());
    }
    sender
}

/// The route of an API request: its path below the location, and its query string.
///
/// # Safety
/// `r` is a live request.
unsafe fn request_route(r: *mut ngx_http_request_t) -> Result<Route, ApiError> {
    // SAFETY: see the function's contract.
    let reading = reading(&unsafe { Request::from_ngx_http_request(r) }.method());
    // SAFETY: as above.
    unsafe { relative_path(r) }.and_then(|path| route(path, req_args(r), reading))
}

/// How a zone's keys are shown in the API.
fn key_kind(zone: &ZoneConf) -> api::KeyKind {
    api::KeyKind::of(zone.key.value.as_bytes())
}

/// The request's path below the API's location, still percent-encoded (keys may hold `/`).
///
/// # Safety
/// `r` is a live request.
unsafe fn relative_path<'a>(r: *mut ngx_http_request_t) -> Result<&'a [u8], ApiError> {
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let raw = req.unparsed_uri().as_bytes();
    let path = raw.split(|&c| c == b'?').next().unwrap_or(raw);
    let prefix = NgxHttpCoreModule::location_conf(req).map(|clcf| clcf.name.as_bytes());
    match prefix.and_then(|prefix| path.strip_prefix(prefix)) {
        Some(rest) => Ok(rest),
        None => Err(ApiError::new(404, "no such endpoint; the API's location must be a prefix")),
    }
}

unsafe extern "C" fn api_body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with the request once its body is read.
    let rc = crate::ffi::guard(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || unsafe {
        let method = Request::from_ngx_http_request(r).method();
        let next = request_route(r).and_then(|route| {
            let body = request_body(r)?;
            match on_redis(r, &method, &route, Some(&body)) {
                Some(asked) => asked.map(Next::AskRedis),
                None => serve(r, &method, &route, Some(&body)).map(Next::Answer),
            }
        });
        match next {
            // The answer comes with Redis's reply; the request was counted for it.
            Ok(Next::AskRedis((zone, command))) => ask_redis(r, zone, command),
            Ok(Next::Answer(answer)) => respond(r, Ok(answer)),
            Err(e) => respond(r, Err(e)),
        }
    });
    // SAFETY: as above.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// What a request whose body is read leads to: an answer now, or a round trip to Redis.
enum Next {
    Answer((u16, Value)),
    AskRedis((&'static ZoneConf, Command)),
}

/// The request body, when it is in memory (it is unless it outgrew client_body_buffer_size).
///
/// # Safety
/// `r` is a live request whose body has been read.
unsafe fn request_body(r: *mut ngx_http_request_t) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(413, "the body is larger than client_body_buffer_size");
    let mut body = Vec::new();
    // SAFETY: see the function's contract; the chain is null-terminated.
    unsafe {
        let Some(rb) = (*r).request_body.as_ref() else {
            return Ok(body);
        };
        let mut cl = rb.bufs;
        while let Some(link) = cl.as_ref() {
            let buf = &*link.buf;
            if buf.in_file() != 0 {
                return Err(too_large());
            }
            let len = buf.last.offset_from(buf.pos) as usize;
            body.extend_from_slice(core::slice::from_raw_parts(buf.pos, len));
            cl = link.next;
        }
    }
    Ok(body)
}

/// An answer: a status and a JSON body.
type Answer = Result<(u16, Value), ApiError>;

/// # Safety
/// `r` is a live request whose response has not started.
unsafe fn discard_and_answer(r: *mut ngx_http_request_t, answer: Answer) -> ngx_int_t {
    // SAFETY: see the function's contract.
    if unsafe { ngx_http_discard_request_body(r) } != NGX_OK as ngx_int_t {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // SAFETY: as above.
    unsafe { respond(r, answer) }
}

/// # Safety
/// `r` is a live request whose response has not started.
unsafe fn respond(r: *mut ngx_http_request_t, answer: Answer) -> ngx_int_t {
    let (status, body) = match answer {
        Ok((status, value)) => (status, value.to_string()),
        Err(e) => {
            if e.status == 405 {
                // SAFETY: see the function's contract.
                if unsafe { allow_header(r) }.is_none() {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
                }
            }
            (e.status, e.body())
        }
    };
    let json = ngx_string!("application/json");
    // SAFETY: as above.
    unsafe { send(r, status, json, Body::Copied(format!("{body}\n").as_bytes())) }
}

/// `Allow:` with the methods of the request's route.
///
/// # Safety
/// `r` is a live request whose headers have not been sent.
unsafe fn allow_header(r: *mut ngx_http_request_t) -> Option<()> {
    // SAFETY: see the function's contract.
    let methods = match unsafe { request_route(r) }.ok()? {
        Route::Zones => METHODS_ZONES,
        Route::Zone(_) => METHODS_ZONE,
        Route::Permits(_) => METHODS_PERMITS,
        Route::Permit(..) => METHODS_PERMIT,
    };
    let value = ngx_str_t { data: methods.as_ptr().cast_mut(), len: methods.len() };
    // SAFETY: as above; the value is static.
    unsafe { add_header(r, "Allow", value) }
}

/// Serves one API request.
///
/// # Safety
/// `r` is a live request.
unsafe fn serve(
    r: *mut ngx_http_request_t,
    method: &Method,
    route: &Route,
    body: Option<&[u8]>,
) -> Answer {
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let main =
        MainConf::of(req).ok_or_else(|| ApiError::new(500, "no flash sale configuration"))?;
    // SAFETY: zone configurations live in the cycle's pool, as long as this location.
    let zones: Vec<&ZoneConf> = main.zones.iter().map(|z| unsafe { z.as_ref() }).collect();
    let find = |name: &str| {
        // SAFETY: see the function's contract.
        unsafe { zone_named(r, name) }
            .ok_or_else(|| ApiError::new(404, format!("no zone \"{name}\"")))
    };
    let not_allowed = || Err(ApiError::new(405, "method not allowed here"));
    let get = reading(method);
    match route {
        Route::Zones if get => {
            Ok((200, Value::Array(zones.iter().filter_map(|z| zone_json(z)).collect())))
        }
        Route::Zone(name) if get => Ok((200, zone_json(find(name)?).ok_or_else(unavailable)?)),
        Route::Zone(name) if *method == Method::PATCH => {
            let zone = find(name)?;
            let patch = api::patch(body.unwrap_or_default())?;
            with_store(zone, |store, slab| {
                let overrides = &store.table().overrides;
                let _locked = slab.lock();
                overrides.store(&api::patched(&overrides.load(), &patch)?);
                Ok(())
            })?;
            Ok((200, zone_json(zone).ok_or_else(unavailable)?))
        }
        Route::Permits(name) if get => {
            let page = api::page(req_args(r))?;
            let permits =
                with_store(
                    find(name)?,
                    |store, _| Ok(store.list(page.after.as_ref(), page.limit)),
                )?;
            Ok((200, api::page_json(&permits, page.limit, key_kind(find(name)?))))
        }
        Route::Permits(name) if *method == Method::POST => {
            let zone = find(name)?;
            let grants = api::grants(body.unwrap_or_default())?;
            with_store(zone, |store, _| {
                let done = store.grant(&grants);
                let landed = done
                    .granted
                    .iter()
                    .take_while(|permit| zone.journal(|| state::grant(permit), req.log()))
                    .count();
                if landed < done.granted.len() {
                    // All or nothing: a grant the state file cannot keep is not made. Those
                    // whose records landed are revoked on disk too, as far as it takes them.
                    for permit in &done.granted[..landed] {
                        zone.journal(|| state::revoke(permit.seq), req.log());
                    }
                    for permit in done.granted.iter().rev() {
                        store.undo(&permit.key, permit.seq);
                    }
                    return Err(ApiError::new(
                        503,
                        "the state file cannot take the grants (see the error log); nothing granted",
                    ));
                }
                let permits = store.permits();
                let cap = store.table().overrides.load().max_permits.or(zone.largest_cap);
                Ok((
                    200,
                    json!({
                        "granted": done.granted.len(),
                        "already": done.already,
                        "zone_full": done.zone_full,
                        "permits": permits,
                        "over_cap": cap.is_some_and(|cap| permits > cap),
                    }),
                ))
            })
        }
        Route::Permits(name) if *method == Method::DELETE => {
            let zone = find(name)?;
            with_store(zone, |store, _| {
                // On disk first: a clearing the state file cannot keep would come undone at
                // the next start.
                let next_seq = store.next_number();
                if !zone.journal(|| state::clear(next_seq), req.log()) {
                    return Err(ApiError::new(
                        503,
                        "the state file cannot take the clearing (see the error log); nothing revoked",
                    ));
                }
                let revoked = store.clear();
                Ok((200, json!({ "revoked": revoked })))
            })
        }
        Route::Permit(name, key) if get => {
            let zone = find(name)?;
            with_store(zone, |store, _| {
                let permit =
                    store.get(key).ok_or_else(|| ApiError::new(404, "no permit for this key"))?;
                Ok((200, api::permit_json(&permit, key_kind(zone))))
            })
        }
        Route::Permit(name, key) if *method == Method::DELETE => {
            let zone = find(name)?;
            with_store(zone, |store, _| {
                let permit =
                    store.get(key).ok_or_else(|| ApiError::new(404, "no permit for this key"))?;
                // On disk first: a revocation the state file cannot keep would come undone at
                // the next start.
                if !zone.journal(|| state::revoke(permit.seq), req.log()) {
                    return Err(ApiError::new(
                        503,
                        "the state file cannot take the revocation (see the error log); nothing revoked",
                    ));
                }
                store.revoke_numbered(key, permit.seq);
                Ok((200, json!({ "revoked": 1 })))
            })
        }
        _ => not_allowed(),
    }
}

fn unavailable() -> ApiError {
    ApiError::new(500, "the zone is not available")
}

/// The request's arguments (after `?`).
fn req_args<'a>(r: *mut ngx_http_request_t) -> &'a [u8] {
    // SAFETY: `r` is live while the API serves it.
    unsafe { (*r).args.as_bytes() }
}

/// Runs `f` on a store over the zone and its slab pool (for the lock).
fn with_store<T>(
    zone: &ZoneConf,
    f: impl FnOnce(&mut ZoneStore<'_, SlabPool>, &SlabPool) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let slab = zone.slab().ok_or_else(unavailable)?;
    let store = zone.store(crate::http::now_ms()).ok_or_else(unavailable)?;
    f(&mut store.with_numbers(zone.numbers()), &slab)
}

/// A zone as JSON: settings, permits, memory and counters.
fn zone_json(zone: &ZoneConf) -> Option<Value> {
    let m = zone_metrics(zone)?;
    let overrides = zone.table_ref()?.overrides.load();
    // Dry-run counters once they count something.
    let requests: serde_json::Map<String, Value> = Outcome::counted()
        .filter(|&(o, dry)| !dry || m.requests[o.counter(true)] > 0)
        .map(|(o, dry)| (o.name(dry).to_string(), json!(m.requests[o.counter(dry)])))
        .collect();
    Some(json!({
        "name": m.name,
        "key": zone.key.value.to_string(),
        "permits": m.permits,
        "prequeued": m.prequeued,
        "max_permits": m.max_permits,
        "overrides": api::overrides_json(&overrides),
        "memory": { "used": m.bytes_used, "total": m.bytes_total },
        "requests": requests,
        "granted": m.granted,
        "revoked": m.revoked,
        "expired": m.expired,
        "tokens": { "valid": m.tokens_valid, "refused": m.tokens_refused },
        "state": zone.state.as_ref().map(|file| json!({
            "path": file.path.display().to_string(),
            "up": m.state_up == Some(1),
            "errors": m.state_errors,
            "bytes": file.size().ok(),
        })),
        "redis": zone.redis().map(|redis| json!({
            "server": redis.settings.server(),
            "prefix": redis.settings.prefix,
            "up": m.redis_up == Some(1),
            "calls": m.redis_calls,
            "errors": m.redis_errors,
            "errors_by_kind": m.redis_failures.map(|counts| {
                Failure::KINDS
                    .iter()
                    .zip(counts)
                    .map(|(kind, n)| ((*kind).to_string(), json!(n)))
                    .collect::<serde_json::Map<String, Value>>()
            }),
        })),
    }))
}

/// Reads a zone's figures: the counters without the lock, the permits and memory with it.
fn zone_metrics(zone: &ZoneConf) -> Option<ZoneMetrics> {
    let shm = zone.shm();
    let slab = zone.slab()?;
    let now = crate::http::now_ms();
    let mut store = zone.store(now)?;
    let (permits, prequeued) = store.counts();
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
        prequeued,
        granted: load(&stats.granted),
        revoked: load(&stats.revoked),
        expired: load(&stats.expired),
        tokens_valid: load(&stats.tokens_valid),
        tokens_refused: load(&stats.tokens_refused),
        redis_calls: zone.redis.map(|_| load(&stats.redis_calls)),
        redis_errors: zone.redis.map(|_| load(&stats.redis_errors)),
        redis_failures: zone
            .redis
            .map(|_| core::array::from_fn(|i| load(&stats.redis_failures[i]))),
        redis_up: zone.redis.map(|_| u64::from(!table.link.is_down())),
        state_errors: zone.state.as_ref().map(|_| load(&stats.state_errors)),
        state_up: zone.state.as_ref().map(|_| u64::from(!table.journal.health.is_down())),
        max_permits: table.overrides.load().max_permits.or(zone.largest_cap),
        // SAFETY: nginx sets the page size at startup.
        bytes_used: total.saturating_sub(free_pages * unsafe { ngx_pagesize } as u64),
        bytes_total: total,
    })
}
