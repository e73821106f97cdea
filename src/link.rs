//! What a host knows of a sale kept in Redis, kept in the zone so that every worker of the
//! host shares it: whether Redis answers, until when its SOLD_OUT is trusted, when the next
//! copy of the permits and read of the overrides are due, and the per-key draws' secret.
//! Atomics only, no lock; plain Rust.

use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::health::{claim_turn, Change, Health};
use crate::line::{LineFigures, WAIT_BUCKETS};
use crate::remote::{Answer, LineAnswer, Reply};
use crate::sale::{Held, Outcome, PermitInfo};

/// A host reads the sale's overrides once per cache time, and at most this often: they change
/// by hand, and a short cache (or none) is about permits.
pub const OVERRIDES_MIN_MS: i64 = 1000;

/// The link's health and what the host knows of the sale in Redis, kept in the zone so that
/// every worker of a host shares it. Atomics only, no lock.
#[repr(C)]
#[derive(Default)]
pub struct Link {
    /// Whether Redis answers; see [`Health`].
    health: Health,
    /// Until when Redis's SOLD_OUT is trusted without asking.
    sold_out_until_ms: AtomicI64,
    /// When one request may next copy every permit from Redis (see [`Command::Permits`]).
    copy_at_ms: AtomicI64,
    /// When one request may next read the sale's overrides from Redis.
    overrides_at_ms: AtomicI64,
    /// The sale's secret for per-key draws, from Redis; valid once `draw_secret_known` is 1.
    draw_secret: [AtomicU64; 2],
    draw_secret_known: AtomicU64,
    /// The sale's opening on this host (a sale with a pre-queue): 0 before, the time a request
    /// claimed it while it asks Redis, -1 once done.
    opening_ms: AtomicI64,
    /// When one request may next read the line's figures from Redis.
    figures_at_ms: AtomicI64,
    /// The line's figures as Redis last gave them (see [`LineFigures`]; `serving` 0 for none),
    /// and the buyers registered for the pre-queue.
    figures: [AtomicU64; FIGURES],
}

/// How many numbers the line's figures are kept as: waiting, serving, admitted, left, the
/// last minute, prequeued, the wait's sum, and its histogram.
const FIGURES: usize = 7 + WAIT_BUCKETS.len() + 1;

/// A host reads the line's figures from Redis at most this often, for the metrics and the API.
pub const FIGURES_MS: i64 = 1000;

impl Link {
    /// Whether a request may ask Redis now: always while it answers; while it is down, one
    /// request per host every [`crate::health::RETRY_MS`], so a dead Redis costs one timeout a second, not
    /// one per request.
    pub fn may_ask(&self, now_ms: i64) -> bool {
        self.health.may_try(now_ms)
    }

    pub fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// Redis failed to answer at `now_ms`.
    pub fn failed(&self, now_ms: i64) -> Change {
        self.health.failed(now_ms)
    }

    /// Redis answered at `now_ms` a round trip asked at `asked_ms`.
    pub fn answered(&self, asked_ms: i64, now_ms: i64) -> Change {
        self.health.worked(asked_ms, now_ms)
    }

    /// Whether this request is the one (per host and cache time) that copies every permit
    /// from Redis after a SOLD_OUT, so that SOLD_OUT can be trusted for unknown keys.
    pub fn claim_copy(&self, now_ms: i64, cache_ms: i64) -> bool {
        claim_turn(&self.copy_at_ms, now_ms, cache_ms)
    }

    /// Whether this request is the one (per host and cache time) that reads the sale's
    /// overrides from Redis, so that a change made through any host's API reaches this one.
    pub fn claim_overrides(&self, now_ms: i64, cache_ms: i64) -> bool {
        claim_turn(&self.overrides_at_ms, now_ms, cache_ms.max(OVERRIDES_MIN_MS))
    }

    /// The sale's secret for per-key draws, once a host has it from Redis.
    pub fn draw_secret(&self) -> Option<[u64; 2]> {
        (self.draw_secret_known.load(Ordering::Acquire) == 1).then(|| {
            [
                self.draw_secret[0].load(Ordering::Relaxed),
                self.draw_secret[1].load(Ordering::Relaxed),
            ]
        })
    }

    /// Keeps the secret Redis gave. Every host and worker gets the same one, so two workers
    /// storing it at once store the same value.
    pub fn set_draw_secret(&self, secret: [u64; 2]) {
        self.draw_secret[0].store(secret[0], Ordering::Relaxed);
        self.draw_secret[1].store(secret[1], Ordering::Relaxed);
        self.draw_secret_known.store(1, Ordering::Release);
    }

    /// Whether this request is the one that opens the sale on this host (asks Redis for the
    /// pre-queue's draw and the permits it gave): once per host, and again after `retry_ms`
    /// if the one that claimed it did not finish (a worker that died).
    pub fn claim_opening(&self, now_ms: i64, retry_ms: i64) -> bool {
        let claimed = self.opening_ms.load(Ordering::Acquire);
        let free = claimed == 0 || (claimed > 0 && now_ms.saturating_sub(claimed) > retry_ms);
        free && self
            .opening_ms
            .compare_exchange(claimed, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether the sale is opened on this host.
    pub fn opened(&self) -> bool {
        self.opening_ms.load(Ordering::Acquire) == -1
    }

    /// The opening is done (true), or failed and is left for another request (false).
    pub fn opening_done(&self, done: bool) {
        self.opening_ms.store(if done { -1 } else { 0 }, Ordering::Release);
    }

    /// Whether this request is the one (per host and [`FIGURES_MS`]) that reads the line's
    /// figures from Redis.
    pub fn claim_figures(&self, now_ms: i64) -> bool {
        claim_turn(&self.figures_at_ms, now_ms, FIGURES_MS)
    }

    /// Keeps the line's figures Redis gave, and the pre-queue's registrations.
    pub fn set_figures(&self, line: &LineFigures, prequeued: u64) {
        let values = [
            line.waiting,
            line.serving.unwrap_or(0),
            line.admitted,
            line.left,
            line.admitted_last_minute,
            prequeued,
            line.waited_ms,
        ]
        .into_iter()
        .chain(line.waited);
        for (slot, value) in self.figures.iter().zip(values) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// The line's figures as Redis last gave them, and the pre-queue's registrations.
    pub fn figures(&self) -> (LineFigures, u64) {
        let v: [u64; FIGURES] = core::array::from_fn(|i| self.figures[i].load(Ordering::Relaxed));
        let line = LineFigures {
            waiting: v[0],
            serving: (v[1] > 0).then_some(v[1]),
            admitted: v[2],
            left: v[3],
            admitted_last_minute: v[4],
            waited_ms: v[6],
            waited: core::array::from_fn(|i| v[7 + i]),
        };
        (line, v[5])
    }

    /// Whether Redis said SOLD_OUT and no admission has reopened the sale since (trusted or
    /// stale: a waiter is then not answered from the host's cache).
    pub fn known_sold_out(&self) -> bool {
        self.sold_out_until_ms.load(Ordering::Acquire) != 0
    }

    /// Remembers Redis's SOLD_OUT for `cache_ms`: the host holds a copy of every permit.
    pub fn sold_out(&self, now_ms: i64, cache_ms: i64) {
        self.sold_out_until_ms.store(now_ms.saturating_add(cache_ms).max(1), Ordering::Release);
    }

    /// Whether a new buyer is told SOLD_OUT without asking Redis, or even drawing: while what
    /// Redis said is fresh (`cache_ms`).
    pub fn trusts_sold_out(&self, now_ms: i64) -> bool {
        let until = self.sold_out_until_ms.load(Ordering::Acquire);
        until != 0 && now_ms < until
    }

    /// Whether a draw winner may ask Redis for a permit: always while the sale is not known to
    /// be sold out; once what Redis said is stale, one winner per host and `cache_ms` asks
    /// (true) while the others go on being told SOLD_OUT (false), so that a refresh is one
    /// round trip, not a burst. Its answer decides: SOLD_OUT again ([`Link::sold_out`]), or a
    /// permit, which reopens the sale to every winner ([`Link::reopened`]).
    pub fn may_ask_for_permit(&self, now_ms: i64, cache_ms: i64) -> bool {
        let until = self.sold_out_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now_ms < until {
            return false;
        }
        self.sold_out_until_ms
            .compare_exchange(
                until,
                now_ms.saturating_add(cache_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Redis admitted a new buyer: there is room again (a permit expired, or was revoked or
    /// released on some host), so every draw winner asks again until Redis says SOLD_OUT, and
    /// then one request copies the permits afresh (the copy this host had is out of date).
    pub fn reopened(&self) {
        self.sold_out_until_ms.store(0, Ordering::Release);
        self.copy_at_ms.store(0, Ordering::Release);
    }
}

/// What the gate does with Redis's answer to one of its round trips, once this host's
/// knowledge (the [`Link`]) is updated by [`Link::after_reply`]; the glue applies it to its
/// cache of permits and to the request.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterReply {
    /// Keep the buyer's permit (`new`: just admitted) and let him through with `outcome`.
    Pass { outcome: Outcome, held: Held, new: bool },
    /// Sold out: forget the buyer; first copy every permit from Redis when `copy` (this
    /// request won the copy's turn), so that winners of other hosts still pass here.
    SoldOut { copy: bool },
    /// The buyer holds permits for `flash_sale_max_per_buyer` items already: forget the
    /// permit asked about and tell him so. Says nothing of the sale's stock.
    LimitReached,
    /// The copy of every permit a SOLD_OUT asked for: keep it, then answer SOLD_OUT.
    Copied(Vec<PermitInfo>),
    /// The buyer's permit is gone (revoked since this host heard): forget it and decide him
    /// anew, as a new buyer.
    Revoked,
    /// The per-key draws' secret is known now, or the sale is opened on this host: decide
    /// the request anew.
    Again,
    /// The buyer waits in the line: his ticket and place, as Redis said.
    Waiting { ticket: u64, position: u64 },
    /// The buyer is registered for the pre-queue (true), or the sale opened in Redis first.
    Registered(bool),
    /// The opening's copy of every permit: keep it, then decide the request anew.
    Opened(Vec<PermitInfo>),
    /// A reply that answers no gate's round trip.
    Unexpected,
}

impl Link {
    /// Takes in Redis's reply to a gate's round trip at `now_ms`: an admission reopens a sold
    /// out sale, a SOLD_OUT claims the copy's turn (per `cache_ms`), a secret is kept. Says
    /// what the gate does next. In a zone that sells several items (`itemized`), a SOLD_OUT
    /// is the item's, not the sale's: no copy is made, and the host never trusts it for other
    /// buyers (they may ask for other items).
    pub fn after_reply(
        &self,
        reply: Reply,
        now_ms: i64,
        cache_ms: i64,
        itemized: bool,
    ) -> AfterReply {
        let reply = match reply {
            Reply::Lined(LineAnswer::Admission(answer)) => Reply::Admission(answer),
            Reply::Lined(LineAnswer::Waiting { ticket, position, .. }) => {
                return AfterReply::Waiting { ticket, position }
            }
            reply => reply,
        };
        match reply {
            Reply::Admission(Answer::Admitted(held)) => {
                self.reopened();
                AfterReply::Pass { outcome: Outcome::Admitted, held, new: true }
            }
            Reply::Admission(Answer::Permitted(held)) => {
                AfterReply::Pass { outcome: Outcome::Permitted, held, new: false }
            }
            Reply::Admission(Answer::SoldOut) => AfterReply::SoldOut {
                copy: !itemized && cache_ms > 0 && self.claim_copy(now_ms, cache_ms),
            },
            Reply::Admission(Answer::LimitReached) => AfterReply::LimitReached,
            Reply::Admission(Answer::NotHeld) => AfterReply::Revoked,
            Reply::Permits(permits) => AfterReply::Copied(permits),
            Reply::DrawSecret(secret) => {
                self.set_draw_secret(secret);
                AfterReply::Again
            }
            Reply::Registered(registered) => AfterReply::Registered(registered),
            Reply::Opened(permits) => AfterReply::Opened(permits),
            _ => AfterReply::Unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_lead_the_gate_on() {
        let link = Link::default();
        let held = Held { seq: 4, expires_ms: None };
        link.sold_out(1_000, 500);
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::Admitted(held)), 1_600, 500, false),
            AfterReply::Pass { outcome: Outcome::Admitted, held, new: true }
        );
        assert!(!link.trusts_sold_out(1_601), "an admission reopens the sale");
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::Permitted(held)), 1_700, 500, false),
            AfterReply::Pass { outcome: Outcome::Permitted, held, new: false }
        );
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::SoldOut), 2_000, 500, false),
            AfterReply::SoldOut { copy: true },
            "the first SOLD_OUT after reopening copies the permits"
        );
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::SoldOut), 2_100, 500, false),
            AfterReply::SoldOut { copy: false },
            "one copy per cache time"
        );
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::SoldOut), 2_100, 0, false),
            AfterReply::SoldOut { copy: false },
            "no cache, no copy"
        );
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::NotHeld), 0, 500, false),
            AfterReply::Revoked
        );
        assert_eq!(
            link.after_reply(Reply::Permits(Vec::new()), 0, 500, false),
            AfterReply::Copied(Vec::new())
        );
        assert_eq!(link.after_reply(Reply::DrawSecret([7, 8]), 0, 500, false), AfterReply::Again);
        assert_eq!(link.draw_secret(), Some([7, 8]));
        assert_eq!(link.after_reply(Reply::Cleared(3), 0, 500, false), AfterReply::Unexpected);
    }

    #[test]
    fn an_item_sold_out_or_a_buyer_at_his_limit_says_nothing_of_the_sale() {
        let link = Link::default();
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::SoldOut), 1_000, 500, true),
            AfterReply::SoldOut { copy: false },
            "an item's SOLD_OUT: no copy"
        );
        assert!(!link.trusts_sold_out(1_001), "nor is it trusted for buyers of other items");
        assert!(link.may_ask_for_permit(1_001, 500));
        assert!(link.claim_copy(1_001, 500), "the copy's turn was left alone");
        let link = Link::default();
        assert_eq!(
            link.after_reply(Reply::Admission(Answer::LimitReached), 2_000, 500, false),
            AfterReply::LimitReached
        );
        assert_eq!(
            link.after_reply(
                Reply::Lined(LineAnswer::Admission(Answer::LimitReached)),
                2_000,
                500,
                true
            ),
            AfterReply::LimitReached
        );
        assert!(!link.known_sold_out(), "LIMIT_REACHED is never the sale's SOLD_OUT");
        assert!(link.claim_copy(2_000, 500), "and claims no copy");
    }

    #[test]
    fn a_line_step_leads_the_gate_as_an_admission_or_a_place() {
        let link = Link::default();
        let held = Held { seq: 2, expires_ms: None };
        assert_eq!(
            link.after_reply(
                Reply::Lined(LineAnswer::Admission(Answer::Admitted(held))),
                0,
                500,
                false
            ),
            AfterReply::Pass { outcome: Outcome::Admitted, held, new: true }
        );
        let waiting = LineAnswer::Waiting { ticket: 9, position: 4, waiting: 12 };
        assert_eq!(
            link.after_reply(Reply::Lined(waiting), 0, 500, false),
            AfterReply::Waiting { ticket: 9, position: 4 }
        );
        assert_eq!(
            link.after_reply(Reply::Lined(LineAnswer::Admission(Answer::SoldOut)), 10, 500, false),
            AfterReply::SoldOut { copy: true }
        );
        assert_eq!(
            link.after_reply(Reply::Registered(false), 0, 500, false),
            AfterReply::Registered(false)
        );
        assert_eq!(
            link.after_reply(Reply::Opened(Vec::new()), 0, 500, false),
            AfterReply::Opened(Vec::new())
        );
    }

    #[test]
    fn the_opening_is_claimed_once_per_host_and_taken_over_if_left() {
        let link = Link::default();
        assert!(!link.opened());
        assert!(link.claim_opening(1_000, 2_000));
        assert!(!link.claim_opening(1_500, 2_000), "one request opens");
        assert!(link.claim_opening(3_001, 2_000), "one that never finished is taken over");
        link.opening_done(false);
        assert!(link.claim_opening(3_002, 2_000), "a failed one is tried again");
        link.opening_done(true);
        assert!(link.opened());
        assert!(!link.claim_opening(1_000_000, 2_000));
    }

    #[test]
    fn the_line_figures_are_kept_as_redis_gave_them() {
        let link = Link::default();
        assert_eq!(link.figures(), (LineFigures::default(), 0));
        let mut line = LineFigures {
            waiting: 5,
            admitted: 7,
            left: 1,
            admitted_last_minute: 3,
            serving: Some(40),
            waited_ms: 12_345,
            ..LineFigures::default()
        };
        line.waited[2] = 4;
        line.waited[10] = 1;
        link.set_figures(&line, 9);
        assert_eq!(link.figures(), (line, 9));
        assert!(link.claim_figures(0));
        assert!(!link.claim_figures(999));
        assert!(link.claim_figures(1_000));
    }

    #[test]
    fn overrides_are_read_once_per_cache_time_and_at_most_once_a_second() {
        let link = Link::default();
        assert!(link.claim_overrides(100, 2000));
        assert!(!link.claim_overrides(2000, 2000));
        assert!(link.claim_overrides(2100, 0), "once per cache time");
        assert!(!link.claim_overrides(2200, 0), "and at most once a second");
        assert!(link.claim_overrides(3100, 0));
    }

    #[test]
    fn the_draw_secret_is_known_once_set() {
        let link = Link::default();
        assert_eq!(link.draw_secret(), None);
        link.set_draw_secret([1, 2]);
        assert_eq!(link.draw_secret(), Some([1, 2]));
    }

    #[test]
    fn one_request_per_cache_time_copies_the_permits() {
        let link = Link::default();
        assert!(link.claim_copy(5_000, 1_000));
        assert!(!link.claim_copy(5_500, 1_000));
        assert!(link.claim_copy(6_000, 1_000));
    }

    #[test]
    fn sold_out_is_trusted_for_the_cache_time() {
        let link = Link::default();
        assert!(!link.trusts_sold_out(0));
        assert!(link.may_ask_for_permit(0, 1_000), "not sold out: every winner asks");
        link.sold_out(10_000, 1_000);
        assert!(link.trusts_sold_out(10_999));
        assert!(!link.may_ask_for_permit(10_999, 1_000));
        assert!(!link.trusts_sold_out(11_000), "stale: new buyers draw again");
        assert!(link.may_ask_for_permit(11_000, 1_000), "stale: one winner asks again");
        assert!(!link.may_ask_for_permit(11_001, 1_000), "the others are told SOLD_OUT");
        assert!(!link.may_ask_for_permit(11_999, 1_000));
        assert!(link.may_ask_for_permit(12_000, 1_000), "until the next cache time");
        // That winner was admitted: the sale is open again, to every winner at once, and the
        // next SOLD_OUT copies the permits afresh.
        assert!(link.claim_copy(12_000, 1_000));
        assert!(!link.claim_copy(12_001, 1_000));
        link.reopened();
        assert!(link.claim_copy(12_001, 1_000));
        assert!(!link.trusts_sold_out(12_001));
        assert!(link.may_ask_for_permit(12_001, 1_000));
        assert!(link.may_ask_for_permit(12_001, 1_000));
    }
}
