//! The gate's steps for a zone kept in Redis (`flash_sale_redis`): the window, this host's
//! cache and the draw here; then, for draw winners and permits this host has not heard of
//! lately, one round trip with the request suspended (see `offload.rs`), and the same
//! conclusion as for a local zone.

use nginx_sys::{
    ngx_http_core_run_phases, ngx_http_request_empty_handler, NGX_LOG_ERR, NGX_LOG_WARN,
};
use ngx::core::{SlabPool, Status};
use ngx::http::{HTTPStatus, Request};
use ngx::ngx_log_error;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::conf::{Gate, LocConf, ZoneConf, ZoneRef};
use crate::ffi::Next;
use crate::gate::verdict::{conclude, drawer, request_item, request_key, request_sale, Gated};
use crate::health::Change;
use crate::http::now_ms;
use crate::line::Estimate;
use crate::link::AfterReply;
use crate::offload;
use crate::remote::{Command, Failure, LineSettings, LineStep, OnError, Reply, Settle};
use crate::sale::{
    admitted, draw_step, lined, DrawMode, Outcome, PermitKey, PermitStore, Queue, Queued, Sale,
    Step, Verdict,
};
use crate::zone::{Cached, RemoteView, Stats, ZoneStore};

fn server_error() -> Next {
    HTTPStatus::INTERNAL_SERVER_ERROR.into()
}

/// Decides a main request in its precontent phase, gated by `zone`, a zone kept in
/// Redis; `key` is its key. Returns what the phase handler returns (`NGX_AGAIN` while Redis
/// is asked).
pub fn gate(
    req: &mut Request,
    lcf: &LocConf,
    zone: ZoneRef,
    key: PermitKey<'_>,
    sale: Sale,
) -> Next {
    let now = now_ms();
    let (Some(store), Some(redis)) = (zone.store(now), zone.redis()) else {
        return server_error();
    };
    let cache_ms = redis.settings.cache_ms;
    let mut store = store.with_ttl(lcf.permit_ttl_ms);
    let g = Gated { lcf, zone, key, now, sale };
    let link = &store.table().link;
    if link.claim_overrides(now, cache_ms) {
        refresh_overrides(zone);
    }
    let per_key = matches!(lcf.draw, Some(DrawMode::PerKey { .. }));
    let wants_shared = per_key && sale.window.check(now).is_ok() && sale.block_ratio.can_block();
    let secret = match link.draw_secret() {
        Some(shared) => shared,
        // The sale's secret first: a buyer draws the same on every host. Without Redis (or
        // randomness), this host's own.
        None if wants_shared && link.may_ask(now) => {
            if let Some(proposal) = random_secret() {
                return ask(req, &zone, Command::DrawSecret { proposal });
            }
            store.table().draw_secret()
        }
        None => store.table().draw_secret(),
    };
    if (zone.lined || zone.prequeued) && link.claim_figures(now) {
        refresh_line(zone);
    }
    // The sale's opening on this host, in a sale with a pre-queue: the draw is made in Redis
    // (by whichever host comes first), and this host learns its winners before anyone is
    // decided here, so that none of them is turned away by the draw.
    if sale.prequeue_ms.is_some()
        && sale.window.check(now).is_ok()
        && !link.opened()
        && link.may_ask(now)
        && link.claim_opening(now, OPENING_RETRY_MS)
    {
        let command = Command::Open {
            cap: sale.cap,
            max_per_buyer: sale.max_per_buyer,
            now_ms: now,
            expires_ms: lcf.permit_ttl_ms.map(|ttl| crate::sale::expiry(now, ttl)),
            line: sale.queue.map(line_settings),
            settle: settle(&sale, now),
        };
        return ask(req, &zone, command);
    }
    let draw = drawer(lcf, secret, key, now);
    let mut view = RemoteView::new(&mut store, cache_ms);
    let step = draw_step(&sale, key, now, draw, &mut view);
    let registering = view.registering;
    let recheck = match step {
        // A registration only Redis can make: asked before the buyer is told PREQUEUED.
        Step::Decided(verdict) if registering && verdict.outcome == Outcome::Prequeued => {
            if !store.table().link.may_ask(now) {
                return conclude(req, &g, Outcome::Unavailable.into());
            }
            return ask(req, &zone, Command::Register { key: key.field(), cap: sale.cap });
        }
        Step::Decided(verdict) => return conclude(req, &g, verdict),
        Step::Recheck => true,
        Step::Admit => false,
        Step::Line => return line_step(req, &g, &mut store, cache_ms),
    };
    if !recheck && !store.table().link.may_ask_for_permit(now, cache_ms) {
        // Sold out, as far as this host knows; another winner is asking Redis again.
        return conclude(req, &g, Outcome::SoldOut.into());
    }
    if !store.table().link.may_ask(now) {
        return without_redis(req, &g);
    }
    let command = Command::Admit {
        key: key.field(),
        cap: sale.cap,
        max_per_buyer: sale.max_per_buyer,
        now_ms: now,
        expires_ms: lcf.permit_ttl_ms.map(|ttl| crate::sale::expiry(now, ttl)),
        recheck,
        // A lined sale's pre-queue goes to its line: only its step draws it.
        settle: match sale.queue {
            None => settle_if_due(&sale, &store.table().link, now).map(Box::new),
            Some(_) => None,
        },
    };
    ask(req, &zone, command)
}

/// How long a host's opening may take before another request takes it over (its worker
/// died): far longer than any round trip.
const OPENING_RETRY_MS: i64 = 10_000;

/// A buyer who may buy, in a sale with a line kept in Redis: answered from what this host
/// heard while the rule allows (see `line::Heard`), or by a step in Redis.
fn line_step(
    req: &mut Request,
    g: &Gated<'_>,
    store: &mut ZoneStore<'_, SlabPool>,
    cache_ms: i64,
) -> Next {
    let Some(queue) = g.sale.queue else {
        return server_error();
    };
    let link = &store.table().link;
    if link.known_sold_out() {
        // Sold out when Redis last said; one waiter per host and cache time asks again, the
        // others are told SOLD_OUT, whatever place they had.
        if !link.may_ask_for_permit(g.now, cache_ms) {
            return conclude(req, g, Outcome::SoldOut.into());
        }
    } else if let Estimate::Queued(waiting) = store.estimate(g.key.key, &queue) {
        return conclude(req, g, lined(Queued::Waiting(waiting)));
    }
    if !store.table().link.may_ask(g.now) {
        return without_redis(req, g);
    }
    let command = Command::Step(Box::new(LineStep {
        key: g.key.field(),
        cap: g.sale.cap,
        max_per_buyer: g.sale.max_per_buyer,
        now_ms: g.now,
        expires_ms: g.lcf.permit_ttl_ms.map(|ttl| crate::sale::expiry(g.now, ttl)),
        line: line_settings(queue),
        settle: settle_if_due(&g.sale, &store.table().link, g.now),
    }));
    ask(req, &g.zone, command)
}

/// The line's settings as a step sends them.
fn line_settings(queue: Queue) -> LineSettings {
    LineSettings { rate_milli: queue.rate.milli(), idle_ms: queue.idle_ms }
}

/// The pre-queue's draw, with a seed from this host's randomness.
fn settle(sale: &Sale, now: i64) -> Settle {
    let seed = StdRng::try_from_os_rng().map_or(now as u32, |mut rng| rng.random());
    Settle { ratio: sale.block_ratio.value(), seed }
}

/// The pre-queue's draw for a step that may be the sale's first in Redis: in a sale with a
/// pre-queue, on a host that has not opened it yet.
fn settle_if_due(sale: &Sale, link: &crate::link::Link, now: i64) -> Option<Settle> {
    (sale.prequeue_ms.is_some() && !link.opened()).then(|| settle(sale, now))
}

/// A proposal for the sale's per-key draw secret, from the system's randomness.
fn random_secret() -> Option<[u64; 2]> {
    let mut rng = StdRng::try_from_os_rng().ok()?;
    Some([rng.random(), rng.random()])
}

/// Sends `command` to the zone's Redis and leaves the request waiting for [`answered`]:
/// `NGX_AGAIN`, for the phase handler to return. A task that cannot be queued (nginx's thread
/// pool queue is full) is decided at once, as Redis failing to answer: counted, logged, and
/// the request goes on without Redis. For a main request in its precontent phase, gated by
/// `zone`.
fn ask(req: &mut Request, zone: &ZoneConf, command: Command) -> Next {
    let Some(redis) = zone.redis() else {
        return server_error();
    };
    let zone_name = zone.name().to_string();
    match offload::post(req, redis.threads, &redis.settings, zone_name, command, Box::new(answered))
    {
        Ok(()) => {
            // Nothing but the reply may run the phases on while it waits.
            req.as_mut().write_event_handler = Some(ngx_http_request_empty_handler);
            Status::NGX_AGAIN.into()
        }
        // Not suspended: decided at once.
        Err(failed) => {
            let (command, failure) = *failed;
            decide_with_reply(req, &command, Err(failure), now_ms())
        }
    }
}

/// Redis's reply to a gate's round trip, for the request [`ask`] suspended: decides, and
/// says how the request goes on (what the precontent phase's checker does with a handler's
/// answer).
fn answered(
    req: &mut Request,
    command: &Command,
    reply: Result<Reply, Failure>,
    asked_ms: i64,
) -> Next {
    // nginx's own function, one symbol in the nginx binary: its address is unique.
    let waiting = ngx_http_request_empty_handler as *const ();
    let handler = req.as_ref().write_event_handler;
    if handler.map(|h| h as *const ()) != Some(waiting) {
        // The request was ended while it waited (nginx set its finalizer): let it end.
        return Next::WriteHandler;
    }
    req.as_mut().write_event_handler = Some(ngx_http_core_run_phases);
    let decided =
        crate::ffi::guard(server_error(), || decide_with_reply(req, command, reply, asked_ms));
    match decided {
        Next::Return(Status::NGX_DECLINED) => Next::RunPhases,
        Next::Return(Status::NGX_AGAIN | Status::NGX_DONE) => Next::Done,
        Next::Return(status) => Next::Finalize(status),
        next => next,
    }
}

/// Decides a gated request on Redis's reply to `command`, or its failure to answer: a request
/// in its precontent phase, the one [`ask`] suspended, back in its worker, or one it could
/// not suspend.
fn decide_with_reply(
    req: &mut Request,
    command: &Command,
    reply: Result<Reply, Failure>,
    asked_ms: i64,
) -> Next {
    let Some(lcf) = LocConf::of(req) else {
        return server_error();
    };
    let Gate::Zone(zone) = lcf.gate else {
        return server_error();
    };
    // The key's and the item's variables are cached, so this is the key asked about.
    let (Some(key), Some(item)) = (request_key(req, &zone), request_item(req, lcf)) else {
        return server_error();
    };
    let key = PermitKey { key, item };
    let Some(sale) = request_sale(req, lcf, zone, key) else {
        return server_error();
    };
    let now = now_ms();
    let (Some(store), Some(redis)) = (zone.store(now), zone.redis()) else {
        return server_error();
    };
    let mut store = store.with_ttl(lcf.permit_ttl_ms);
    let (stats, link) = (&store.table().stats, &store.table().link);
    Stats::count(&stats.redis_calls);
    let g = Gated { lcf, zone, key, now, sale };
    let log = req.log();
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            stats.redis_failed(error.index());
            if link.failed(now) == Change::WentDown {
                let consequence = match redis.settings.on_error {
                    OnError::Closed => "new buyers get UNAVAILABLE".to_string(),
                    OnError::Open => format!(
                        "new buyers are admitted against this host's own cap of {} (on_error=open)",
                        sale.cap.map_or("none".to_string(), |cap| cap.to_string())
                    ),
                };
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "flash_sale_redis zone \"{}\": redis at {} failed: {}; {} until it answers",
                    zone.name(),
                    redis.settings.server(),
                    error,
                    consequence
                );
            }
            // What the request goes on with depends on what it was waiting for.
            return match command {
                // Nobody has drawn yet: draw with this host's own secret.
                Command::DrawSecret { .. } => gate(req, lcf, zone, key, sale),
                // Redis had already said SOLD_OUT; only the copy is missing.
                Command::Permits { .. } => conclude(req, &g, Outcome::SoldOut.into()),
                // Another request opens the sale here once Redis answers.
                Command::Open { .. } => {
                    link.opening_done(false);
                    gate(req, lcf, zone, key, sale)
                }
                // Not registered: told so, before the start (no host admits anyone then).
                Command::Register { .. } => conclude(req, &g, Outcome::Unavailable.into()),
                _ => without_redis(req, &g),
            };
        }
    };
    if let Change::CameBack { down_ms } = link.answered(asked_ms, now) {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash_sale_redis zone \"{}\": redis at {} answers again, after {} ms",
            zone.name(),
            redis.settings.server(),
            down_ms
        );
    }
    let cache_ms = redis.settings.cache_ms;
    let after = link.after_reply(reply, now, cache_ms, sale.itemized);
    if matches!(command, Command::Step(_)) && !matches!(after, AfterReply::Waiting { .. }) {
        // Out of the line: admitted, holding a permit, or told SOLD_OUT or LIMIT_REACHED.
        store.unhear(key.key);
    }
    let verdict = match after {
        AfterReply::Pass { outcome, held, new } => {
            store.remember(key, held, new);
            Verdict::passed(outcome, held)
        }
        AfterReply::Waiting { ticket, position } => {
            let Some(queue) = sale.queue else {
                return server_error();
            };
            let heard = store.hear_place(key.key, ticket, position);
            lined(Queued::Waiting(heard.as_shown(queue.rate)))
        }
        AfterReply::Registered(true) => {
            // Heard of per registration: a buyer registers for each item he asks for.
            store.hear_registered(&key.field());
            Outcome::Prequeued.into()
        }
        // The sale opened in Redis (another host's clock is ahead): not registered.
        AfterReply::Registered(false) => Outcome::NotStarted.into(),
        AfterReply::Opened(permits) => {
            // The pre-queue's winners are known here now: none is taken for a new buyer.
            store.remember_all(&permits);
            link.opening_done(true);
            return gate(req, lcf, zone, key, sale);
        }
        AfterReply::SoldOut { copy } => {
            store.forget(key);
            if copy {
                // Copy every permit first: a winner admitted through another host must not be
                // taken for a new buyer here.
                return ask(req, &zone, Command::Permits { now_ms: now });
            }
            Outcome::SoldOut.into()
        }
        AfterReply::LimitReached => {
            store.forget(key);
            Outcome::LimitReached.into()
        }
        AfterReply::Copied(permits) => {
            // With every permit here, unknown keys can be turned away without asking, until
            // the cache time is up.
            if store.remember_all(&permits) {
                link.sold_out(now, cache_ms);
            }
            Outcome::SoldOut.into()
        }
        AfterReply::Revoked => {
            store.forget(key);
            return gate(req, lcf, zone, key, sale);
        }
        AfterReply::Again => return gate(req, lcf, zone, key, sale),
        AfterReply::Unexpected => return server_error(),
    };
    conclude(req, &g, verdict)
}

/// A draw winner (or a stale permit) when Redis cannot be asked: a winner this host knows of
/// passes; for a new buyer, `on_error=closed` answers UNAVAILABLE, `on_error=open` admits
/// against this host's own zone and cap. For a main request in its precontent phase.
fn without_redis(req: &mut Request, g: &Gated<'_>) -> Next {
    let zone = g.zone;
    let open = zone.redis().is_some_and(|redis| redis.settings.on_error == OnError::Open);
    let Some(store) = zone.store(g.now) else {
        return server_error();
    };
    let mut store = store.with_ttl(g.lcf.permit_ttl_ms);
    let verdict = match store.cached(g.key, i64::MAX) {
        // A winner this host knows of passes, however long ago it heard.
        Cached::Fresh(held) => Verdict::passed(Outcome::Permitted, held),
        _ => match (g.sale.queue, store.heard(g.key.key)) {
            // A waiter this host knows of keeps the place he was shown: nobody is called
            // while Redis is away.
            (Some(queue), Some(heard)) if heard.in_line() => {
                lined(Queued::Waiting(heard.as_shown(queue.rate)))
            }
            // This host's own line, pace and cap.
            (Some(_), _) if open => lined(store.queue(g.key, &g.sale)),
            _ if open => admitted(store.admit(g.key, &g.sale)),
            _ => Outcome::Unavailable.into(),
        },
    };
    conclude(req, g, verdict)
}

/// Revokes a permit the backend released (`flash_sale_release_header`) in Redis too. The
/// response goes on meanwhile: nobody waits for this round trip. False when it could not be
/// queued.
pub fn release(zone: &ZoneConf, key: PermitKey<'_>) -> bool {
    let Some(redis) = zone.redis() else {
        return true;
    };
    let command = Command::Revoke { key: key.field() };
    let name = zone.name().to_string();
    offload::post_detached(redis.threads, &redis.settings, name, command, |_, reply| {
        if let Err(error) = reply {
            // The permit stays in Redis until it expires or is revoked through the API.
            // SAFETY: the cycle outlives its workers' events.
            let log = unsafe { (*nginx_sys::ngx_cycle).log };
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "flash_sale_redis: a permit the backend released is still in Redis: {}",
                error
            );
        }
    })
}

/// Reads the sale's overrides from Redis, for this host to apply when they come; the request
/// that asked goes on meanwhile.
fn refresh_overrides(zone: ZoneRef) {
    refresh(zone, Command::Overrides, |zone, reply| {
        if let Reply::Overrides(overrides) = reply {
            apply_overrides(zone, &overrides);
        }
    });
}

/// Reads the line's figures (and the pre-queue's registrations) from Redis, for this host's
/// metrics and API to show when they come; nobody waits for it.
pub fn refresh_line(zone: ZoneRef) {
    refresh(zone, Command::LineFigures, |zone, reply| {
        if let (Reply::Line(line, prequeued), Some(table)) = (reply, zone.table_ref()) {
            table.link.set_figures(&line, prequeued);
        }
    });
}

/// Runs `command`, a read nobody waits for, on the zone's Redis; counts the round trip (and
/// its failure), and gives a reply to `apply` in the worker.
fn refresh(zone: ZoneRef, command: Command, apply: impl FnOnce(&ZoneConf, Reply) + 'static) {
    let Some(redis) = zone.redis() else {
        return;
    };
    let name = zone.name().to_string();
    offload::post_detached(redis.threads, &redis.settings, name, command, move |_, reply| {
        if let Some(table) = zone.table_ref() {
            Stats::count(&table.stats.redis_calls);
            if let Err(failure) = &reply {
                table.stats.redis_failed(failure.index());
            }
        }
        if let Ok(reply) = reply {
            apply(&zone, reply);
        }
    });
}

/// Makes the sale's overrides in Redis this host's: they replace whatever it had.
pub fn apply_overrides(zone: &ZoneConf, overrides: &crate::sale::Overrides) {
    let (Some(table), Some(slab)) = (zone.table_ref(), zone.slab()) else {
        return;
    };
    // Changes are made under the zone's lock, so that they do not interleave.
    let _locked = slab.lock();
    table.overrides.store(overrides);
}
