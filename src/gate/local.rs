//! The gate's steps for a zone kept in this host's shared memory.

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_NOTICE};
use ngx::http::{HTTPStatus, Request};
use ngx::ngx_log_error;

use crate::conf::{LocConf, ZoneRef};
use crate::ffi::Next;
use crate::gate::verdict::{conclude, drawer, Gated};
use crate::http::now_ms;
use crate::sale::{decide, Outcome, PermitInfo, PermitKey, Sale};
use crate::state;

/// Decides a request of a zone kept here: the decision and the admission in one locked step,
/// the state file, and the conclusion, for a main request in its precontent phase, gated by
/// `zone`; `key` is its key and item, `sale` its location's sale for it.
pub fn gate(
    req: &mut Request,
    lcf: &LocConf,
    zone: ZoneRef,
    key: PermitKey<'_>,
    sale: Sale,
) -> Next {
    let now = now_ms();
    let Some(store) = zone.store(now) else {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    };
    let mut store = store.with_ttl(lcf.permit_ttl_ms).with_numbers(zone.numbers());
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
            // A winner of the draw whose record the state file cannot take is not one.
            if !zone.journal(|| state::grant(permit), log) {
                store.undo(permit.permit_key(), permit.seq);
            }
        }
    }
    if let (Outcome::Admitted, Some(held)) = (verdict.outcome, verdict.permit) {
        // The record is only built when the zone has a state file.
        let permit = || PermitInfo {
            key: key.key.to_vec(),
            item: key.item.to_vec(),
            seq: held.seq,
            granted_ms: now,
            expires_ms: held.expires_ms,
        };
        // A buyer is told ADMITTED only once his permit is on disk: if the state file cannot
        // take it, the admission is undone and he is told UNAVAILABLE, as with Redis away.
        if !zone.journal(|| state::grant(&permit()), log) {
            store.undo(key, held.seq);
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
    if store.line_newly_full() {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "flash_sale_zone \"{}\": the waiting line has no room for another waiter; new \
             buyers get UNAVAILABLE",
            zone.name()
        );
    }
    let g = Gated { lcf, zone, key, now, sale };
    conclude(req, &g, verdict)
}
