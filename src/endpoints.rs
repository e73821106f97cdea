//! HTTP endpoints of the module: `flash_sale_metrics` (Prometheus text) and `flash_sale_api`
//! (JSON over the zones). Parsing and JSON are in `api.rs` and `metrics.rs`; this file reads
//! requests, touches the zones and sends answers.

use core::ffi::{c_char, c_void};
use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    ngx_pagesize,
};
use ngx::core::{SlabPool, Status};
use ngx::http::{HTTPStatus, HttpModuleLocationConf, Method, NgxHttpCoreModule, Request};
use ngx::ngx_string;

use serde_json::{json, Value};

use crate::api::{self, route, ApiError, Route};
use crate::conf::{LocConf, MainConf, ZoneConf, ZoneRef};
use crate::ffi::{directive, ConfError, ConfResult, Directive, Next};
use crate::gate::redis as redis_gate;
use crate::http::{add_header, keep, kept, main_request, send, static_str, Body, Kept};
use crate::metrics::{render, ZoneMetrics};
use crate::offload;
use crate::remote::{Command, Failure, Reply};
use crate::sale::{BlockRatio, Outcome, Overrides, OverridesPatch, PermitKey};
use crate::state;
use crate::zone::{Stats, ZoneStore};

/// `flash_sale_metrics;` makes the location answer with the metrics.
pub unsafe extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, |d, _: &mut LocConf| content_handler(d, metrics_handler)) }
}

/// Makes the location being parsed answer with `handler`.
fn content_handler(
    d: &mut Directive<'_>,
    handler: unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t,
) -> ConfResult {
    let clcf = NgxHttpCoreModule::location_conf_mut(d.conf()).ok_or(ConfError::Logged)?;
    clcf.handler = Some(handler);
    Ok(())
}

unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request in its content phase.
    unsafe { crate::ffi::with_request(r, server_error(), metrics) }.0
}

fn server_error() -> Status {
    HTTPStatus::INTERNAL_SERVER_ERROR.into()
}

/// Answers a request in its content phase with the metrics.
fn metrics(req: &mut Request) -> Status {
    if !reading(&req.method()) {
        return HTTPStatus::NOT_ALLOWED.into();
    }
    if !req.discard_request_body().is_ok() {
        return server_error();
    }
    let Some(main) = MainConf::of(req) else {
        return server_error();
    };
    let zones: Vec<ZoneMetrics> =
        main.zones.iter().filter_map(|&zone| zone_metrics(zone)).collect();
    let text = render(&zones);
    send(req, 200, ngx_string!("text/plain; version=0.0.4"), Body::Copied(&text))
}

/// `flash_sale_api;` makes the location answer the admin API.
pub unsafe extern "C" fn set_api(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as for `set_metrics`.
    unsafe { directive(cf, cmd, conf, |d, _: &mut LocConf| content_handler(d, api_handler)) }
}

const METHODS_ZONES: &str = "GET, HEAD";
const METHODS_ZONE: &str = "GET, HEAD, PATCH";
const METHODS_PERMITS: &str = "GET, HEAD, POST, DELETE";
const METHODS_PERMIT: &str = "GET, HEAD, DELETE";
const METHODS_ITEMS: &str = "GET, HEAD";
const METHODS_ITEM: &str = "GET, HEAD, PATCH";

unsafe extern "C" fn api_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request in its content phase.
    unsafe { crate::ffi::with_request(r, server_error(), api) }.0
}

/// An admin API request as it came: its method and its route, read once.
#[derive(Clone)]
struct ApiRequest {
    method: Method,
    route: Route,
}

impl Kept for ApiRequest {
    const CLEANUP: unsafe extern "C" fn(*mut c_void) = drop_api_request;
}

/// Drops the `ApiRequest` kept with a request whose body was read, with the request's pool.
unsafe extern "C" fn drop_api_request(data: *mut c_void) {
    // SAFETY: `keep` wrote an `ApiRequest` there, and the pool runs this once.
    unsafe { core::ptr::drop_in_place(data.cast::<ApiRequest>()) }
}

/// Answers an admin API request in its content phase: at once, or once its body is read
/// ([`api_body_ready`]), or with Redis's reply ([`ask_redis`]).
fn api(req: &mut Request) -> Status {
    let method = req.method();
    let asked = match request_route(req, &method) {
        Ok(route) => ApiRequest { method, route },
        Err(e) => return discard_and_answer(req, None, Err(e)),
    };
    let with_body = match &asked.route {
        Route::Permits(_) => asked.method == Method::POST,
        Route::Zone(_) | Route::Item(..) => asked.method == Method::PATCH,
        _ => false,
    };
    if with_body || asked.method == Method::DELETE {
        if let Err(e) = api::check_sender(&sender(req), with_body) {
            return discard_and_answer(req, Some(&asked.route), Err(e));
        }
    }
    if with_body {
        // The body is read with the request's route: kept with it until then.
        if keep(req, asked).is_none() {
            return server_error();
        }
        // The body lands in memory, in one buffer, where it fits.
        crate::flags::set_request_body_in_single_buf(req.as_mut(), true);
        // SAFETY: the request is live; nginx calls `api_body_ready` with it once the body is in.
        let rc =
            Status(unsafe { ngx_http_read_client_request_body(req.into(), Some(api_body_ready)) });
        if rc >= HTTPStatus::SPECIAL_RESPONSE.into() {
            return rc;
        }
        return Status::NGX_DONE;
    }
    match on_redis(req, &asked, None) {
        Some(Ok((zone, command))) => ask_redis(req, asked, &zone, command),
        Some(Err(e)) => discard_and_answer(req, Some(&asked.route), Err(e)),
        None => {
            let answer = serve(req, &asked, None);
            discard_and_answer(req, Some(&asked.route), answer)
        }
    }
}

/// For a zone kept in Redis, the command a permit route runs there; `None` for a zone kept
/// here, for a route that reads or changes this host's zone only, and for a grant whose body
/// is not read yet.
fn on_redis(
    req: &Request,
    asked: &ApiRequest,
    body: Option<&[u8]>,
) -> Option<Result<(ZoneRef, Command), ApiError>> {
    let method = &asked.method;
    let (name, key) = match &asked.route {
        Route::Permits(name) => (name, None),
        Route::Permit(name, key, item) => (name, Some(PermitKey { key, item })),
        Route::Items(name) if reading(method) => {
            let zone = zone_named(req, name)?;
            zone.redis?;
            // The page is checked here, so that a bad one costs no round trip.
            let page = api::item_page(req_args(req));
            return Some(page.map(|p| (zone, Command::Items { after: p.after, limit: p.limit })));
        }
        Route::Item(name, item) => {
            let zone = zone_named(req, name)?;
            zone.redis?;
            let item = item.clone();
            let command = match method {
                m if reading(m) => Ok(Command::Item { item }),
                m if *m == Method::PATCH => {
                    let body = body?;
                    sells_items(&zone)
                        .and_then(|_| api::item_patch(body))
                        .map(|max_permits| Command::SetItemStock { item, max_permits })
                }
                _ => return None,
            };
            return Some(command.map(|command| (zone, command)));
        }
        Route::Zone(name) if *method == Method::PATCH => {
            let zone = zone_named(req, name)?;
            zone.redis?;
            return Some(
                override_changes(&zone, body?).map(|patch| (zone, Command::SetOverrides { patch })),
            );
        }
        _ => return None,
    };
    let zone = zone_named(req, name)?;
    zone.redis?;
    let get = reading(method);
    let now_ms = crate::http::now_ms();
    if let Some(key) = key {
        if let Err(refused) = one_item_has_none(&zone, key.item) {
            return Some(Err(refused));
        }
    }
    let command = match key {
        Some(key) if get => Ok(Command::Get { key: key.field(), now_ms }),
        Some(key) if *method == Method::DELETE => Ok(Command::Revoke { key: key.field() }),
        None if *method == Method::DELETE => Ok(Command::Clear),
        // The page is checked here, so that a bad one costs no round trip.
        None if get => api::page(req_args(req)).map(|_| Command::Permits { now_ms }),
        None if *method == Method::POST => {
            zone_grants(&zone, body?).map(|grants| Command::Grant { grants, now_ms })
        }
        _ => return None,
    };
    Some(command.map(|command| (zone, command)))
}

/// The body of a grant, for this zone: in a zone that sells several items every permit names
/// its item, in a zone of one item none does (a permit no request could ever use is refused).
fn zone_grants(zone: &ZoneConf, body: &[u8]) -> Result<Vec<crate::sale::Grant>, ApiError> {
    let grants = api::grants(body)?;
    for (_, item, _) in &grants {
        if zone.itemized && item.is_empty() {
            return Err(ApiError::new(400, "this zone sells items: give each permit its \"item\""));
        }
        one_item_has_none(zone, item)?;
    }
    Ok(grants)
}

/// Whether the zone sells several items (a location of it has `flash_sale_item`): an item's
/// stock is set there only (409 otherwise: a zone of one item has its `max_permits`).
fn sells_items(zone: &ZoneConf) -> Result<(), ApiError> {
    if zone.itemized {
        return Ok(());
    }
    Err(ApiError::new(
        409,
        format!(
            "zone \"{}\" sells one item (no flash_sale_item): set its max_permits with PATCH zones/{}",
            zone.name(),
            zone.name()
        ),
    ))
}

/// A permit route's `?item=` on a zone of one item names a permit that cannot be: 400, as a
/// grant naming an item there is.
fn one_item_has_none(zone: &ZoneConf, item: &[u8]) -> Result<(), ApiError> {
    if zone.itemized || item.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        400,
        "this zone sells one item (no flash_sale_item): a permit has no \"item\"",
    ))
}

/// The 404 of a permit route: in a zone that sells several items, a permit is a buyer's and
/// an item's, which `?item=` names.
fn no_permit(zone: &ZoneConf, item: &[u8]) -> ApiError {
    if zone.itemized && item.is_empty() {
        return ApiError::new(404, "no permit for this key; this zone sells items: add ?item=ITEM");
    }
    ApiError::new(404, "no permit for this key")
}

/// A PATCH's changes to a zone kept in Redis; checked here, against the overrides this host
/// has, so that a bad one costs no round trip.
fn override_changes(zone: &ZoneConf, body: &[u8]) -> Result<OverridesPatch, ApiError> {
    let patch = api::patch(body)?;
    let here = zone.table_ref().map(|table| table.overrides.load()).unwrap_or_default();
    patched(zone, &here, &patch)?;
    Ok(patch)
}

/// The zone's overrides `now` with `patch`'s changes made, refused (400, changing nothing) as
/// `nginx -t` refuses the same in the configuration: a window with no time, or a block ratio
/// in a zone whose line draws per request.
fn patched(
    zone: &ZoneConf,
    now: &Overrides,
    patch: &OverridesPatch,
) -> Result<Overrides, ApiError> {
    let next = api::patched(now, patch)?;
    let blocks = next.block_ratio.and_then(BlockRatio::new).is_some_and(BlockRatio::can_block);
    if zone.lined_per_request && blocks {
        return Err(ApiError::new(
            400,
            "block_ratio: this zone's line draws per request, where a buyer turned away draws \
             again and joins anyway; set flash_sale_draw per_key first",
        ));
    }
    Ok(next)
}

/// The zone of this name, as the request's configuration declares it.
fn zone_named(req: &Request, name: &str) -> Option<ZoneRef> {
    let main = MainConf::of(req)?;
    main.zones.iter().copied().find(|z| z.name().as_bytes() == name.as_bytes())
}

/// Runs an API command on Redis for a request in its content phase, `zone` being kept in
/// Redis; the request waits, and [`redis_answer`] answers with the reply.
fn ask_redis(req: &mut Request, asked: ApiRequest, zone: &ZoneConf, command: Command) -> Status {
    let Some(redis) = zone.redis() else {
        return server_error();
    };
    if !req.discard_request_body().is_ok() {
        return server_error();
    }
    let name = zone.name().to_string();
    let again = asked.clone();
    // The reply finalizes the request once more: the finalization counted below.
    let answered = move |req: &mut Request, _: &Command, reply, _| {
        Next::Finalize(redis_answer(req, &asked, reply))
    };
    if let Err(failed) =
        offload::post(req, redis.threads, &redis.settings, name, command, Box::new(answered))
    {
        // Not queued: answered at once, as Redis failing to answer.
        return redis_answer(req, &again, Err(failed.1));
    }
    let main = main_request(req);
    crate::flags::set_count(main, crate::flags::count(main) + 1);
    Status::NGX_DONE
}

/// Answers an API request in its content phase with Redis's reply (a failure: 502 with its
/// JSON reason); a revocation is applied to this host's cache too, so that it is seen here at
/// once.
fn redis_answer(req: &mut Request, asked: &ApiRequest, reply: Result<Reply, Failure>) -> Status {
    let (zone, key, item) = match &asked.route {
        Route::Permit(name, key, item) => (zone_named(req, name), key.clone(), item.clone()),
        Route::Permits(name) | Route::Zone(name) | Route::Items(name) | Route::Item(name, _) => {
            (zone_named(req, name), Vec::new(), Vec::new())
        }
        Route::Zones => (None, Vec::new(), Vec::new()),
    };
    let answer = match zone {
        Some(zone) if matches!(reply, Ok(Reply::Overrides(_))) => {
            if let Ok(Reply::Overrides(overrides)) = &reply {
                redis_gate::apply_overrides(&zone, overrides);
            }
            apply_here(&zone, PermitKey { key: &key, item: &item }, &reply);
            zone_json(zone).map(|json| (200, json)).ok_or_else(unavailable)
        }
        Some(zone) => {
            apply_here(&zone, PermitKey { key: &key, item: &item }, &reply);
            let cap = zone.cap();
            let page = api::page(req_args(req)).ok();
            let item_page = api::item_page(req_args(req)).ok();
            let kind = key_kind(&zone);
            let ask = api::RemoteAsk { key, item, page, item_page, cap, kind };
            match reply {
                Ok(reply) => api::remote_answer(&ask, reply),
                Err(e) => Err(ApiError::new(502, format!("redis did not answer: {e}"))),
            }
        }
        None => Err(ApiError::new(500, "the zone is not available")),
    };
    respond(req, Some(&asked.route), answer)
}

/// Counts a round trip, and applies a revocation to this host's cache of permits.
fn apply_here(zone: &ZoneConf, key: PermitKey<'_>, reply: &Result<Reply, Failure>) {
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
fn request_route(req: &Request, method: &Method) -> Result<Route, ApiError> {
    relative_path(req).and_then(|path| route(path, req_args(req), reading(method)))
}

/// How a zone's keys are shown in the API.
fn key_kind(zone: &ZoneConf) -> api::KeyKind {
    api::KeyKind::of(zone.key.source().as_bytes())
}

/// The request's path below the API's location, still percent-encoded (keys may hold `/`).
fn relative_path(req: &Request) -> Result<&[u8], ApiError> {
    let raw = req.unparsed_uri().as_bytes();
    let path = raw.split(|&c| c == b'?').next().unwrap_or(raw);
    let prefix = NgxHttpCoreModule::location_conf(req).map(|clcf| clcf.name.as_bytes());
    match prefix.and_then(|prefix| path.strip_prefix(prefix)) {
        Some(rest) => Ok(rest),
        None => Err(ApiError::new(404, "no such endpoint; the API's location must be a prefix")),
    }
}

unsafe extern "C" fn api_body_ready(r: *mut ngx_http_request_t) {
    // The answer ends the request's reading of its body: finalized, whatever it is.
    let server_error = Next::Finalize(server_error());
    // SAFETY: nginx calls this with the live request once its body is read.
    unsafe { crate::ffi::handle(r, server_error, |req| Next::Finalize(body_ready(req))) };
}

/// Answers an API request whose body is read: at once, or with Redis's reply.
fn body_ready(req: &mut Request) -> Status {
    let Some(asked) = kept::<ApiRequest>(req).cloned() else {
        return server_error();
    };
    let leads = request_body(req).and_then(|body| match on_redis(req, &asked, Some(&body)) {
        Some(redis) => redis.map(WithBody::AskRedis),
        None => serve(req, &asked, Some(&body)).map(WithBody::Answer),
    });
    match leads {
        // The answer comes with Redis's reply; the request was counted for it.
        Ok(WithBody::AskRedis((zone, command))) => ask_redis(req, asked, &zone, command),
        Ok(WithBody::Answer(answer)) => respond(req, Some(&asked.route), Ok(answer)),
        Err(e) => respond(req, Some(&asked.route), Err(e)),
    }
}

/// What a request whose body is read leads to: an answer now, or a round trip to Redis.
enum WithBody {
    Answer((u16, Value)),
    AskRedis((ZoneRef, Command)),
}

/// The body of a request whose body has been read, when it is in memory (it is unless it
/// outgrew client_body_buffer_size).
fn request_body(req: &Request) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(413, "the body is larger than client_body_buffer_size");
    let mut body = Vec::new();
    // SAFETY: the request body, when read, lives as long as the request; its chain of buffers
    // is null-terminated, and each in-memory buffer's bytes run from `pos` to `last`.
    unsafe {
        let Some(rb) = req.as_ref().request_body.as_ref() else {
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

/// Discards the body of a request whose response has not started, and answers it.
fn discard_and_answer(req: &mut Request, route: Option<&Route>, answer: Answer) -> Status {
    if !req.discard_request_body().is_ok() {
        return server_error();
    }
    respond(req, route, answer)
}

/// Sends `answer` as JSON, for a request of `route` whose response has not started (a 405
/// names the route's methods).
fn respond(req: &mut Request, route: Option<&Route>, answer: Answer) -> Status {
    let (status, body) = match answer {
        Ok((status, value)) => (status, value.to_string()),
        Err(e) => {
            if e.status == 405 && route.and_then(|route| allow_header(req, route)).is_none() {
                return server_error();
            }
            (e.status, e.body())
        }
    };
    send(req, status, ngx_string!("application/json"), Body::Copied(&format!("{body}\n")))
}

/// `Allow:` with the methods of the route.
fn allow_header(req: &mut Request, route: &Route) -> Option<()> {
    let methods = match route {
        Route::Zones => METHODS_ZONES,
        Route::Zone(_) => METHODS_ZONE,
        Route::Permits(_) => METHODS_PERMITS,
        Route::Permit(..) => METHODS_PERMIT,
        Route::Items(_) => METHODS_ITEMS,
        Route::Item(..) => METHODS_ITEM,
    };
    add_header(req, "Allow", static_str(methods))
}

/// Serves one API request on this host's zones.
fn serve(req: &Request, asked: &ApiRequest, body: Option<&[u8]>) -> Answer {
    let (method, route) = (&asked.method, &asked.route);
    let main =
        MainConf::of(req).ok_or_else(|| ApiError::new(500, "no flash sale configuration"))?;
    let zones = &main.zones;
    let find = |name: &str| {
        zone_named(req, name).ok_or_else(|| ApiError::new(404, format!("no zone \"{name}\"")))
    };
    let not_allowed = || Err(ApiError::new(405, "method not allowed here"));
    let get = reading(method);
    match route {
        Route::Zones if get => {
            Ok((200, Value::Array(zones.iter().filter_map(|&z| zone_json(z)).collect())))
        }
        Route::Zone(name) if get => Ok((200, zone_json(find(name)?).ok_or_else(unavailable)?)),
        Route::Zone(name) if *method == Method::PATCH => {
            let zone = find(name)?;
            let patch = api::patch(body.unwrap_or_default())?;
            with_store(&zone, |store, slab| {
                let overrides = &store.table().overrides;
                let _locked = slab.lock();
                overrides.store(&patched(&zone, &overrides.load(), &patch)?);
                Ok(())
            })?;
            Ok((200, zone_json(zone).ok_or_else(unavailable)?))
        }
        Route::Permits(name) if get => {
            let page = api::page(req_args(req))?;
            let zone = find(name)?;
            let permits =
                with_store(&zone, |store, _| Ok(store.list(page.after.as_ref(), page.limit)))?;
            Ok((200, api::page_json(&permits, page.limit, key_kind(&zone))))
        }
        Route::Permits(name) if *method == Method::POST => {
            let zone = find(name)?;
            let grants = zone_grants(&zone, body.unwrap_or_default())?;
            with_store(&zone, |store, _| {
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
                        store.undo(permit.permit_key(), permit.seq);
                    }
                    return Err(ApiError::new(
                        503,
                        "the state file cannot take the grants (see the error log); nothing granted",
                    ));
                }
                let permits = store.permits();
                // Over the cap now: the zone's, or in a zone of items, an item the grant names.
                let cap = zone.cap();
                let over_cap = match zone.itemized {
                    true => grants.iter().any(|(_, item, _)| {
                        store.item(item).is_some_and(|found| {
                            found.cap(cap).is_some_and(|cap| found.permits > cap)
                        })
                    }),
                    false => cap.is_some_and(|cap| permits > cap),
                };
                Ok((
                    200,
                    json!({
                        "granted": done.granted.len(),
                        "already": done.already,
                        "zone_full": done.zone_full,
                        "permits": permits,
                        "over_cap": over_cap,
                    }),
                ))
            })
        }
        Route::Permits(name) if *method == Method::DELETE => {
            let zone = find(name)?;
            with_store(&zone, |store, _| {
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
        Route::Permit(name, key, item) if get => {
            let zone = find(name)?;
            one_item_has_none(&zone, item)?;
            with_store(&zone, |store, _| {
                let permit =
                    store.get(PermitKey { key, item }).ok_or_else(|| no_permit(&zone, item))?;
                Ok((200, api::permit_json(&permit, key_kind(&zone))))
            })
        }
        Route::Permit(name, key, item) if *method == Method::DELETE => {
            let zone = find(name)?;
            one_item_has_none(&zone, item)?;
            with_store(&zone, |store, _| {
                let permit =
                    store.get(PermitKey { key, item }).ok_or_else(|| no_permit(&zone, item))?;
                // On disk first: a revocation the state file cannot keep would come undone at
                // the next start.
                if !zone.journal(|| state::revoke(permit.seq), req.log()) {
                    return Err(ApiError::new(
                        503,
                        "the state file cannot take the revocation (see the error log); nothing revoked",
                    ));
                }
                store.revoke_numbered(PermitKey { key, item }, permit.seq);
                Ok((200, json!({ "revoked": 1 })))
            })
        }
        Route::Items(name) if get => {
            let page = api::item_page(req_args(req))?;
            let after = page.after_number()?;
            let zone = find(name)?;
            let items = with_store(&zone, |store, _| Ok(store.items(after, page.limit)))?;
            Ok((200, api::items_page_json(&items, page.limit, false, zone.cap())))
        }
        Route::Item(name, item) if get => {
            let zone = find(name)?;
            let found = with_store(&zone, |store, _| Ok(store.item(item)))?
                .ok_or_else(|| ApiError::new(404, "no such item in this zone"))?;
            Ok((200, api::item_json(&found, true, zone.cap())))
        }
        Route::Item(name, item) if *method == Method::PATCH => {
            let zone = find(name)?;
            sells_items(&zone)?;
            let max_permits = api::item_patch(body.unwrap_or_default())?;
            let now = with_store(&zone, |store, _| {
                store.set_item_stock(item, max_permits).ok_or_else(|| {
                    ApiError::new(503, "the zone has no room for another item; nothing changed")
                })
            })?;
            Ok((200, api::item_json(&now, true, zone.cap())))
        }
        _ => not_allowed(),
    }
}

fn unavailable() -> ApiError {
    ApiError::new(500, "the zone is not available")
}

/// The request's arguments (after `?`).
fn req_args(req: &Request) -> &[u8] {
    req.as_ref().args.as_bytes()
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
fn zone_json(zone: ZoneRef) -> Option<Value> {
    let m = zone_metrics(zone)?;
    let overrides = zone.table_ref()?.overrides.load();
    // Dry-run counters once they count something.
    let requests: serde_json::Map<String, Value> = Outcome::counted()
        .filter(|&(o, dry)| !dry || m.requests[o.counter(true)] > 0)
        .map(|(o, dry)| (o.name(dry).to_string(), json!(m.requests[o.counter(dry)])))
        .collect();
    Some(json!({
        "name": m.name,
        "key": zone.key.source().to_string(),
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
        "queue": m.line.map(|line| json!({
            "waiting": line.waiting,
            "serving": line.serving,
            "admitted": line.admitted,
            "admitted_last_minute": line.admitted_last_minute,
            "left": line.left,
        })),
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
fn zone_metrics(zone: ZoneRef) -> Option<ZoneMetrics> {
    let shm = zone.shm();
    let slab = zone.slab()?;
    let now = crate::http::now_ms();
    let mut store = zone.store(now)?;
    let (permits, mut prequeued, mut line) = store.counts();
    // Items of a zone kept in Redis are Redis's: a round trip per scrape, left out.
    let items = (zone.itemized && zone.redis.is_none()).then(|| store.item_figures(zone.cap()));
    let table = store.table();
    if zone.redis.is_some() && (zone.lined || zone.prequeued) {
        // The line and the pre-queue are Redis's: as it last told this host, read again at
        // most once a second.
        if table.link.claim_figures(now) {
            redis_gate::refresh_line(zone);
        }
        (line, prequeued) = table.link.figures();
    }
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
        max_permits: zone.cap(),
        // SAFETY: nginx sets the page size at startup.
        bytes_used: total.saturating_sub(free_pages * unsafe { ngx_pagesize } as u64),
        bytes_total: total,
        items: items.map(|(items, _)| items),
        items_sold_out: items.map(|(_, sold_out)| sold_out),
        line: zone.lined.then_some(line),
    })
}
