//! The waiting line, in plain Rust: the pace at which it calls waiters in, where a waiter
//! stands, and how long he will wait.
//!
//! A buyer who may buy (no permit, room under the cap, the draw passed) takes a ticket, the
//! next number, once per key. The line calls waiters in at its rate: a bucket fills with slots
//! at `rate`, holding at most one second's worth (at least one slot), and each slot calls the
//! first live waiter not yet called. A called waiter is admitted when he next asks. A waiter
//! who stops asking for `idle` leaves; if he had been called, his slot goes back to the bucket
//! and calls the next waiter, so that the line never stalls on people who left, and calls held
//! by many who left never come through at once. So:
//! - calls since the opening never exceed `rate` x elapsed time plus the bucket, and neither
//!   do admissions, which follow calls;
//! - while uncalled waiters remain, every slot the bucket makes calls one (none is wasted);
//! - waiters are called in the order of their tickets: nobody before a live waiter who took
//!   an earlier one;
//! - a waiter's place, the waiters ahead of him not yet called, never goes up.
//!
//! The store keeps the line's [`LineState`] and a [`Ranks`] tree over the live tickets in the
//! zone's shared memory; everything here is called under the zone's lock.

/// A pace in thousandths of a slot per second: `limit_req`'s unit (`20r/s` is 20,000, `1r/m`
/// is 16, rounded down as `limit_req` rounds it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(u64);

/// A slot in the bucket's units: millionths, so that a rate in thousandths per second fills
/// whole units every millisecond.
const SLOT: u64 = 1_000_000;

impl Rate {
    /// A rate of `per_second_milli` thousandths of a slot per second; `None` for zero.
    pub fn from_milli(per_second_milli: u64) -> Option<Rate> {
        (per_second_milli > 0).then_some(Rate(per_second_milli))
    }

    /// Thousandths of a slot per second.
    pub fn milli(self) -> u64 {
        self.0
    }

    /// The most the bucket holds, in its units: one second's worth, at least one slot (a
    /// bucket that could not hold a whole slot would never call anybody).
    fn burst(self) -> u64 {
        self.0.saturating_mul(1000).max(SLOT)
    }

    /// Whole seconds, rounded up, in which this pace calls `slots` waiters.
    pub fn seconds_for(self, slots: u64) -> u64 {
        // slots / (milli / 1000) seconds, in integers.
        slots.saturating_mul(1000).div_ceil(self.0)
    }

    /// As `limit_req` writes it: `20r/s`, or `600r/m` for rates that are not whole per second
    /// (to the nearest per minute: `10r/m`, kept as 166 thousandths a second, reads back).
    pub fn to_text(self) -> String {
        if self.0 % 1000 == 0 {
            format!("{}r/s", self.0 / 1000)
        } else {
            format!("{}r/m", (self.0 * 60 + 500) / 1000)
        }
    }
}

/// `flash_sale_queue`: the line's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    /// How fast the line calls waiters in.
    pub rate: Rate,
    /// A waiter who has not asked for this long leaves the line, in milliseconds.
    pub idle_ms: i64,
    /// How often a waiting buyer's page asks again, at most, in milliseconds.
    pub refresh_ms: i64,
}

/// Default `idle=`: one minute.
pub const DEFAULT_IDLE_MS: i64 = 60_000;
/// Default `refresh=`: twenty seconds.
pub const DEFAULT_REFRESH_MS: i64 = 20_000;

impl Queue {
    /// `Retry-After` for a waiter whose turn is `wait_seconds` away: the wait, but no more than
    /// `refresh`, spread by up to a fifth either way (`spread` is uniform in [0, 1)) so that a
    /// line's waiters do not come back in lockstep; whole seconds, at least 1.
    pub fn retry_after(&self, wait_seconds: u64, spread: f64) -> u64 {
        let refresh = (self.refresh_ms.max(0) as u64).div_ceil(1000);
        let base = wait_seconds.min(refresh).max(1) as f64;
        (base * (0.8 + 0.4 * spread.clamp(0.0, 1.0))).round().max(1.0) as u64
    }
}

/// The bucket of slots the line calls waiters with. In shared memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// Slots in the bucket, in millionths.
    units: u64,
    /// When the bucket was last filled, in Unix milliseconds; 0 before the first fill.
    filled_ms: i64,
}

impl Pace {
    /// Adds the slots earned at `rate` since the last fill, not yet capped: they are owed to
    /// the waiters who were in line meanwhile (see [`LineState::call`]), and only what they
    /// cannot take is capped. The first fill starts it full: the first buyers of an empty
    /// line do not wait.
    fn earn(&mut self, rate: Rate, now_ms: i64) {
        if self.filled_ms == 0 {
            self.units = rate.burst();
        } else {
            let elapsed = now_ms.saturating_sub(self.filled_ms).max(0) as u64;
            self.units = self.units.saturating_add(rate.0.saturating_mul(elapsed));
        }
        // A clock that went back does not move the fill time back: no slot is earned twice.
        self.filled_ms = self.filled_ms.max(now_ms);
    }

    /// Keeps at most the burst: one second's worth, which an empty line holds for its next
    /// buyers.
    fn cap(&mut self, rate: Rate) {
        self.units = self.units.min(rate.burst());
    }

    /// Fills the bucket for the time since it was last filled, at `rate`, up to its burst
    /// (with nobody in line to take the slots).
    pub fn fill(&mut self, rate: Rate, now_ms: i64) {
        self.earn(rate, now_ms);
        self.cap(rate);
    }

    /// Takes up to `wanted` whole slots; returns how many it took.
    pub fn take(&mut self, wanted: u64) -> u64 {
        let taken = (self.units / SLOT).min(wanted);
        self.units -= taken * SLOT;
        taken
    }

    /// Gives back `slots` nobody could use, up to the burst.
    pub fn give_back(&mut self, slots: u64, rate: Rate) {
        self.units = self.units.saturating_add(slots.saturating_mul(SLOT)).min(rate.burst());
    }

    /// Whole slots in the bucket.
    pub fn slots(&self) -> u64 {
        self.units / SLOT
    }
}

/// The line's counts. In shared memory, changed under the zone's lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineState {
    /// The ticket the next waiter takes; tickets start at 1.
    pub next_ticket: u64,
    /// No live waiter holds a ticket below this.
    pub head: u64,
    /// Live waiters.
    pub waiting: u64,
    /// The first `called` live waiters are called in.
    pub called: u64,
    pub pace: Pace,
    /// The rate of the last step: the time until the next is paid at it.
    rate: Rate,
    /// Waiters admitted since the zone started, for the metrics.
    pub admitted: u64,
    /// Waiters who left, silent for `idle`, since the zone started.
    pub left: u64,
    /// How long admitted waiters waited: counts per bucket of [`WAIT_BUCKETS`] (the last one
    /// for longer waits), and the sum in milliseconds.
    pub waited: [u64; WAIT_BUCKETS.len() + 1],
    pub waited_ms: u64,
    /// Admissions per second over the last minute: (Unix second, count) in a ring.
    recent: [[u64; 2]; 60],
}

impl Default for LineState {
    fn default() -> LineState {
        LineState {
            next_ticket: 0,
            head: 0,
            waiting: 0,
            called: 0,
            pace: Pace::default(),
            rate: Rate(0),
            admitted: 0,
            left: 0,
            waited: [0; WAIT_BUCKETS.len() + 1],
            waited_ms: 0,
            recent: [[0; 2]; 60],
        }
    }
}

/// The line, as the metrics and the API show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineFigures {
    /// Waiters in line now (silent ones may linger until the next step takes them off).
    pub waiting: u64,
    /// Waiters admitted, and waiters who left silent, since the zone started.
    pub admitted: u64,
    pub left: u64,
    pub admitted_last_minute: u64,
    /// The ticket of the last waiter called in, while one is in line.
    pub serving: Option<u64>,
    /// How long admitted waiters waited: counts per bucket of [`WAIT_BUCKETS`] (then longer),
    /// and the sum in milliseconds.
    pub waited: [u64; WAIT_BUCKETS.len() + 1],
    pub waited_ms: u64,
}

/// The upper bounds of the wait histogram's buckets, in seconds (Prometheus's `le`).
pub const WAIT_BUCKETS: [u64; 10] = [1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/// Where a waiter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Called in: he may come in now.
    Called,
    Waiting(Waiting),
}

/// A waiter not called yet: `position` waiters ahead of him are still to be called, which at
/// the line's pace takes `wait_seconds` (whole seconds, rounded up, at least 1: his own call
/// too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub position: u64,
    pub wait_seconds: u64,
}

/// A Fenwick tree over a ring of ticket slots: how many live tickets lie in a range, and the
/// oldest live one, each in O(log n). Ticket `t` counts at slot `t % capacity`; the store
/// keeps every live ticket within `capacity` of the line's head, so slots never collide.
///
/// Written here rather than taken from a crate: it lives in a slice of the zone's shared
/// memory, which the Fenwick crates (which own a `Vec`) cannot use.
pub struct Ranks<'a> {
    tree: &'a mut [u32],
}

impl<'a> Ranks<'a> {
    /// A tree over `tree`, all zeroes for an empty line; its length is the capacity.
    pub fn new(tree: &'a mut [u32]) -> Ranks<'a> {
        Ranks { tree }
    }

    pub fn capacity(&self) -> u64 {
        self.tree.len() as u64
    }

    fn slot(&self, ticket: u64) -> usize {
        (ticket % self.capacity()) as usize
    }

    fn add(&mut self, slot: usize, delta: i32) {
        let mut i = slot + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] = self.tree[i - 1].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Live tickets in slots `0..slot`.
    fn prefix(&self, slot: usize) -> u64 {
        let mut sum = 0;
        let mut i = slot;
        while i > 0 {
            sum += u64::from(self.tree[i - 1]);
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// Live tickets in the ring from `from`'s slot up to (not including) `to`'s, `to` no more
    /// than one lap after `from`.
    fn between(&self, from: u64, to: u64) -> u64 {
        if to <= from {
            return 0;
        }
        if to - from >= self.capacity() {
            return self.prefix(self.tree.len());
        }
        let (a, b) = (self.slot(from), self.slot(to));
        if a <= b {
            self.prefix(b) - self.prefix(a)
        } else {
            self.prefix(self.tree.len()) - self.prefix(a) + self.prefix(b)
        }
    }

    /// The first slot whose prefix reaches `k` (k >= 1, at most the live total).
    fn find(&self, mut k: u64) -> usize {
        let mut pos = 0;
        let mut step = self.tree.len().next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= self.tree.len() && u64::from(self.tree[next - 1]) < k {
                pos = next;
                k -= u64::from(self.tree[next - 1]);
            }
            step >>= 1;
        }
        pos
    }

    /// The oldest live ticket at or after `head`, with `next_ticket` the first not taken;
    /// `next_ticket` when none is live.
    fn oldest(&self, head: u64, next_ticket: u64) -> u64 {
        self.nth(head, next_ticket, 1)
    }

    /// The `n`th live ticket (from 1) at or after `head`; `next_ticket` when fewer are live.
    fn nth(&self, head: u64, next_ticket: u64, n: u64) -> u64 {
        if n == 0 || self.between(head, next_ticket) < n {
            return next_ticket;
        }
        let start = self.slot(head);
        let before_start = self.prefix(start);
        let after_start = self.prefix(self.tree.len()) - before_start;
        // In ring order from the head's slot: its slots to the end first, then the wrap.
        let slot =
            if n <= after_start { self.find(before_start + n) } else { self.find(n - after_start) };
        let offset = (slot + self.tree.len() - start) % self.tree.len();
        head + offset as u64
    }
}

/// Why a buyer could not join the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFull {
    /// As many tickets are live, or outstanding since the oldest live one, as the ring holds.
    Full,
}

impl LineState {
    /// A new waiter takes the next ticket. `Err` when the ring has no slot for it.
    pub fn join(&mut self, ranks: &mut Ranks<'_>) -> Result<u64, LineFull> {
        if self.next_ticket == 0 {
            self.next_ticket = 1;
            self.head = 1;
        }
        if self.next_ticket - self.head >= ranks.capacity() {
            self.head = ranks.oldest(self.head, self.next_ticket);
            if self.next_ticket - self.head >= ranks.capacity() {
                return Err(LineFull::Full);
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ranks.add(ranks.slot(ticket), 1);
        self.waiting += 1;
        Ok(ticket)
    }

    /// Calls waiters in with the slots earned up to `now_ms`: every slot earned while
    /// uncalled waiters were in line calls one of them, whenever the next step comes; what is
    /// left is capped at the burst.
    ///
    /// The time since the last step is paid at the rate that step ran at, so that a new rate
    /// (the admin API's, another location's) takes effect from now on: no burst from a
    /// change, and none held back.
    pub fn call(&mut self, rate: Rate, now_ms: i64) {
        let ran_at = if self.rate.0 == 0 { rate } else { self.rate };
        self.pace.earn(ran_at, now_ms);
        self.rate = rate;
        let uncalled = self.waiting - self.called;
        self.called += self.pace.take(uncalled);
        self.pace.cap(rate);
    }

    /// Where the waiter with `ticket` stands; call [`LineState::call`] first.
    pub fn place(&self, ranks: &Ranks<'_>, ticket: u64, rate: Rate) -> Place {
        let ahead = ranks.between(self.head, ticket);
        if ahead < self.called {
            return Place::Called;
        }
        let position = ahead - self.called;
        // His own slot too: he comes in with the slot after the `position` before him.
        Place::Waiting(Waiting { position, wait_seconds: rate.seconds_for(position + 1) })
    }

    /// Counts an admission from the line at `now_ms` of a waiter who joined at `joined_ms`.
    pub fn count_admission(&mut self, joined_ms: i64, now_ms: i64) {
        let waited_ms = now_ms.saturating_sub(joined_ms).max(0) as u64;
        let bucket = WAIT_BUCKETS.iter().position(|&le| waited_ms <= le * 1000);
        self.waited[bucket.unwrap_or(WAIT_BUCKETS.len())] += 1;
        self.waited_ms = self.waited_ms.saturating_add(waited_ms);
        let second = now_ms.max(0) as u64 / 1000;
        let slot = &mut self.recent[(second % 60) as usize];
        if slot[0] != second {
            *slot = [second, 0];
        }
        slot[1] += 1;
    }

    /// Admissions from the line in the minute up to `now_ms`.
    pub fn admitted_last_minute(&self, now_ms: i64) -> u64 {
        let second = now_ms.max(0) as u64 / 1000;
        self.recent.iter().filter(|[s, _]| *s + 60 > second && *s <= second).map(|[_, n]| n).sum()
    }

    /// The ticket of the last waiter called in, if one is in line: where the line is
    /// serving.
    pub fn serving(&self, ranks: &Ranks<'_>) -> Option<u64> {
        (self.called > 0).then(|| ranks.nth(self.head, self.next_ticket, self.called))
    }

    /// The waiter with `ticket` leaves the line: admitted (`admitted` is true: he used his
    /// call), or gone. A called waiter who is gone gives his slot back to the bucket, so that
    /// the next waiter is called in his place at the next step, but never more than one
    /// second's worth at once.
    pub fn leave(&mut self, ranks: &mut Ranks<'_>, ticket: u64, admitted: bool) {
        if ticket < self.head || ticket >= self.next_ticket || self.waiting == 0 {
            return;
        }
        // Called, he was among the first `called` waiters.
        let was_called = admitted || ranks.between(self.head, ticket) < self.called;
        ranks.add(ranks.slot(ticket), -1);
        self.waiting -= 1;
        if was_called {
            self.called -= 1;
        }
        if admitted {
            self.admitted += 1;
        } else {
            self.left += 1;
            if was_called {
                // His slot goes back to the bucket, which holds one second's worth at most:
                // calls held by waiters who left are not let through all at once when they go.
                self.pace.give_back(1, self.rate);
            }
        }
        if self.called > self.waiting {
            self.pace.give_back(self.called - self.waiting, self.rate);
            self.called = self.waiting;
        }
        if self.waiting == 0 {
            self.head = self.next_ticket;
        }
    }
}

/// What a host heard from Redis about one waiter of a line kept there (`flash_sale_redis`),
/// kept in the host's zone so that his refreshes need not all be round trips. In shared
/// memory.
///
/// The rule: a refresh is answered from here, without Redis, while
/// - less than half of `idle` has passed since Redis was last asked about him (so that his
///   place in Redis, which only a round trip renews, is never at risk of idling out), and
/// - he is far from his turn: his estimated wait is longer than `refresh` (the most a waiter's
///   page waits before asking again), so that he is asked about in Redis on the refresh
///   before he is called, and is admitted then.
///
/// His estimated place is the one Redis gave him less what the line's pace has called since
/// (`rate` x the time since, in whole slots), and never more than the place he was last
/// shown. With waiters ahead of him, every slot the pace earns calls one of them, and those
/// who leave move him up too: his real place is never behind the estimate, so the estimate
/// never holds back a waiter whose turn has come for longer than the time it takes to ask
/// Redis again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heard {
    /// His ticket in Redis's line; 0 for a buyer registered for the pre-queue (not in line).
    pub ticket: u64,
    /// The waiters ahead of him still to be called, as Redis said.
    pub position: u64,
    /// The place he was last shown: what he sees never goes up while he keeps asking.
    pub shown: u64,
    /// When Redis said it, in this host's Unix milliseconds.
    pub asked_ms: i64,
}

/// What a host answers a waiter's refresh with, from what it heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimate {
    /// Far from his turn, and his place in Redis safe: QUEUED, without a round trip.
    Queued(Waiting),
    /// Ask Redis: he may be near his turn, or his place needs renewing.
    Ask,
}

impl Heard {
    /// What Redis said at `now_ms`: ticket and place, shown as no more than what `before`
    /// (the last heard for this buyer) showed for the same ticket.
    pub fn new(before: Option<Heard>, ticket: u64, position: u64, now_ms: i64) -> Heard {
        let shown = match before {
            Some(b) if b.ticket == ticket && ticket != 0 => b.shown.min(position),
            _ => position,
        };
        Heard { ticket, position, shown, asked_ms: now_ms }
    }

    /// A buyer registered for the pre-queue in Redis at `now_ms`.
    pub fn registered(now_ms: i64) -> Heard {
        Heard { ticket: 0, position: 0, shown: 0, asked_ms: now_ms }
    }

    /// Whether this is a waiter (not a pre-queue registration).
    pub fn in_line(&self) -> bool {
        self.ticket != 0
    }

    /// The waiters ahead of him now, estimated: Redis's place less what the pace has called
    /// since, never above what he was shown.
    pub fn position_at(&self, rate: Rate, now_ms: i64) -> u64 {
        let since = now_ms.saturating_sub(self.asked_ms).max(0) as u64;
        let called = rate.0.saturating_mul(since) / SLOT;
        self.position.saturating_sub(called).min(self.shown)
    }

    /// The answer to his refresh at `now_ms` under `queue` (see the rule above).
    pub fn estimate(&self, queue: &Queue, now_ms: i64) -> Estimate {
        let since = now_ms.saturating_sub(self.asked_ms);
        if !self.in_line() || since < 0 || since >= queue.idle_ms / 2 {
            return Estimate::Ask;
        }
        let position = self.position_at(queue.rate, now_ms);
        let wait_seconds = queue.rate.seconds_for(position + 1);
        let refresh = (queue.refresh_ms.max(0) as u64).div_ceil(1000);
        if wait_seconds <= refresh {
            return Estimate::Ask;
        }
        Estimate::Queued(Waiting { position, wait_seconds })
    }

    /// As shown now: his last shown place and its wait (what a host answers while Redis is
    /// away: nobody is called meanwhile).
    pub fn as_shown(&self, rate: Rate) -> Waiting {
        Waiting { position: self.shown, wait_seconds: rate.seconds_for(self.shown + 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u64) -> Rate {
        Rate::from_milli(per_second * 1000).unwrap()
    }

    /// A line with its own tree, as the zone keeps one.
    struct Line {
        state: LineState,
        tree: Vec<u32>,
    }

    impl Line {
        fn new(capacity: usize) -> Line {
            Line { state: LineState::default(), tree: vec![0; capacity] }
        }
        fn join(&mut self) -> Result<u64, LineFull> {
            self.state.join(&mut Ranks::new(&mut self.tree))
        }
        fn ask(&mut self, ticket: u64, rate: Rate, now: i64) -> Place {
            self.state.call(rate, now);
            let place = self.state.place(&Ranks::new(&mut self.tree), ticket, rate);
            if place == Place::Called {
                self.state.leave(&mut Ranks::new(&mut self.tree), ticket, true);
            }
            place
        }
        fn leave(&mut self, ticket: u64) {
            self.state.leave(&mut Ranks::new(&mut self.tree), ticket, false);
        }
    }

    #[test]
    fn rates_in_limit_req_units() {
        assert_eq!(rate(20).milli(), 20_000);
        assert_eq!(Rate::from_milli(0), None);
        assert_eq!(rate(20).seconds_for(40), 2);
        assert_eq!(rate(20).seconds_for(41), 3);
        assert_eq!(Rate::from_milli(16).unwrap().seconds_for(1), 63, "1r/m as limit_req has it");
        assert_eq!(rate(20).to_text(), "20r/s");
        assert_eq!(Rate::from_milli(10_000 / 60).unwrap().to_text(), "10r/m", "as given");
        assert_eq!(Rate::from_milli(16).unwrap().to_text(), "1r/m");
    }

    #[test]
    fn retry_after_is_the_wait_capped_at_refresh_and_spread() {
        let q = Queue { rate: rate(1), idle_ms: 60_000, refresh_ms: 20_000 };
        assert_eq!(q.retry_after(10, 0.5), 10);
        assert_eq!(q.retry_after(100, 0.5), 20, "no more than refresh");
        assert_eq!(q.retry_after(100, 0.0), 16, "a fifth less");
        assert_eq!(q.retry_after(100, 0.999), 24, "a fifth more");
        assert_eq!(q.retry_after(0, 0.0), 1, "at least a second");
        let spread: std::collections::BTreeSet<u64> =
            (0..100).map(|i| q.retry_after(100, i as f64 / 100.0)).collect();
        assert!(spread.len() >= 8, "{spread:?}");
    }

    #[test]
    fn the_bucket_starts_full_holds_one_second_and_earns_nothing_twice() {
        let mut pace = Pace::default();
        pace.fill(rate(20), 1_000);
        assert_eq!(pace.slots(), 20, "one second's worth at the opening");
        assert_eq!(pace.take(100), 20);
        pace.fill(rate(20), 1_050);
        assert_eq!(pace.slots(), 1, "one slot per 50 ms");
        pace.fill(rate(20), 900);
        assert_eq!(pace.slots(), 1, "a clock that goes back earns nothing");
        pace.fill(rate(20), 1_100);
        assert_eq!(pace.slots(), 2, "and does not earn the same time twice");
        pace.fill(rate(20), 100_000);
        assert_eq!(pace.slots(), 20, "idle time earns at most the burst");
        let mut slow = Pace::default();
        slow.fill(Rate::from_milli(16).unwrap(), 1);
        assert_eq!(slow.slots(), 1, "a slow line still holds one slot");
    }

    #[test]
    fn ranks_count_live_tickets_across_the_ring() {
        let mut tree = vec![0; 8];
        let mut ranks = Ranks::new(&mut tree);
        for t in 5..13 {
            ranks.add(ranks.slot(t), 1);
        }
        assert_eq!(ranks.between(5, 13), 8);
        assert_eq!(ranks.between(7, 11), 4, "slots 7..3, across the wrap");
        ranks.add(ranks.slot(8), -1);
        assert_eq!(ranks.between(5, 12), 6);
        assert_eq!(ranks.oldest(5, 13), 5);
        ranks.add(ranks.slot(5), -1);
        ranks.add(ranks.slot(6), -1);
        ranks.add(ranks.slot(7), -1);
        assert_eq!(ranks.oldest(5, 13), 9, "past the departed, and past the wrap");
    }

    #[test]
    fn waiters_are_called_in_order_at_the_rate() {
        let mut line = Line::new(1024);
        let r = rate(10);
        let tickets: Vec<u64> = (0..100).map(|_| line.join().unwrap()).collect();
        // At the opening the bucket holds one second: the first ten are called.
        assert_eq!(line.ask(tickets[0], r, 1_000), Place::Called);
        assert_eq!(line.ask(tickets[9], r, 1_000), Place::Called);
        assert_eq!(
            line.ask(tickets[10], r, 1_000),
            Place::Waiting(Waiting { position: 0, wait_seconds: 1 }),
            "the eight called waiters ahead, who have not come in yet, are not counted"
        );
        assert_eq!(
            line.ask(tickets[50], r, 1_000),
            Place::Waiting(Waiting { position: 40, wait_seconds: 5 })
        );
        // One second later ten more are called: 2..20 are called, ticket 21 is next.
        assert_eq!(
            line.ask(tickets[50], r, 2_000),
            Place::Waiting(Waiting { position: 30, wait_seconds: 4 })
        );
        assert_eq!(line.ask(tickets[19], r, 2_000), Place::Called);
        assert_eq!(
            line.ask(tickets[20], r, 2_000),
            Place::Waiting(Waiting { position: 0, wait_seconds: 1 })
        );
    }

    #[test]
    fn admissions_never_outrun_the_pace_and_no_slot_is_wasted() {
        let mut line = Line::new(4096);
        let r = rate(20);
        let tickets: Vec<u64> = (0..2000).map(|_| line.join().unwrap()).collect();
        let mut admitted = 0u64;
        let mut waiting: Vec<u64> = tickets.clone();
        // Everyone asks every 100 ms for 30 s.
        for step in 0..300 {
            let now = 10_000 + step * 100;
            waiting.retain(|&t| {
                let called = line.ask(t, r, now) == Place::Called;
                admitted += u64::from(called);
                !called
            });
            let elapsed_ms = (now - 10_000) as u64;
            assert!(admitted <= 20 * elapsed_ms / 1000 + 20, "{admitted} at {elapsed_ms} ms");
            assert!(admitted + 20 >= 20 * elapsed_ms / 1000, "slots wasted: {admitted}");
        }
    }

    #[test]
    fn silent_waiters_leave_and_pass_their_slots_on() {
        let mut line = Line::new(64);
        let r = rate(2);
        let tickets: Vec<u64> = (0..10).map(|_| line.join().unwrap()).collect();
        line.state.call(r, 1_000);
        assert_eq!(line.state.called, 2);
        // The two called waiters never come back: when they leave, the next two are called.
        line.leave(tickets[0]);
        line.leave(tickets[1]);
        assert_eq!(line.ask(tickets[2], r, 1_000), Place::Called);
        assert_eq!(line.ask(tickets[3], r, 1_000), Place::Called);
        assert_eq!(
            line.ask(tickets[4], r, 1_000),
            Place::Waiting(Waiting { position: 0, wait_seconds: 1 })
        );
        // Uncalled waiters ahead who leave move a waiter up.
        assert_eq!(
            line.ask(tickets[9], r, 1_000),
            Place::Waiting(Waiting { position: 5, wait_seconds: 3 })
        );
        line.leave(tickets[5]);
        assert_eq!(
            line.ask(tickets[9], r, 1_000),
            Place::Waiting(Waiting { position: 4, wait_seconds: 3 })
        );
    }

    #[test]
    fn an_empty_line_keeps_at_most_one_second_for_the_next_buyers() {
        let mut line = Line::new(256);
        let r = rate(5);
        let t = line.join().unwrap();
        assert_eq!(line.ask(t, r, 1_000), Place::Called);
        assert_eq!(line.state.waiting, 0);
        // An hour later, a crowd of 100: five come in at once, the rest wait. (The store calls
        // before a buyer joins, so that slots earned before he came are not his.)
        line.state.call(r, 3_601_000);
        let tickets: Vec<u64> = (0..100).map(|_| line.join().unwrap()).collect();
        let now = 3_601_000;
        let called = tickets.iter().filter(|&&t| line.ask(t, r, now) == Place::Called).count();
        assert_eq!(called, 5);
    }

    #[test]
    fn the_serving_ticket_and_the_last_minute() {
        let mut line = Line::new(16);
        let r = rate(2);
        let tickets: Vec<u64> = (0..6).map(|_| line.join().unwrap()).collect();
        line.leave(tickets[0]);
        line.state.call(r, 1_000);
        assert_eq!(line.state.serving(&Ranks::new(&mut line.tree)), Some(tickets[2]));
        line.state.count_admission(500, 1_000);
        line.state.count_admission(0, 30_000);
        line.state.count_admission(0, 61_500);
        assert_eq!(line.state.admitted_last_minute(61_900), 2);
        assert_eq!(line.state.waited[0], 1, "half a second");
        assert_eq!(line.state.waited[5], 1, "61.5 s: up to 120");
        assert_eq!(line.state.waited_ms, 500 + 30_000 + 61_500);
    }

    #[test]
    fn a_full_ring_refuses_until_its_oldest_waiters_leave() {
        let mut line = Line::new(4);
        let r = rate(1);
        let tickets: Vec<u64> = (0..4).map(|_| line.join().unwrap()).collect();
        assert_eq!(line.join(), Err(LineFull::Full));
        line.leave(tickets[1]);
        assert_eq!(line.join(), Err(LineFull::Full), "the oldest still holds the ring");
        line.leave(tickets[0]);
        let t = line.join().unwrap();
        assert_eq!(t, 5);
        assert_eq!(
            line.ask(tickets[3], r, 1_000),
            Place::Waiting(Waiting { position: 0, wait_seconds: 1 })
        );
        assert_eq!(line.ask(t, r, 1_000), Place::Waiting(Waiting { position: 1, wait_seconds: 2 }));
    }

    #[test]
    fn a_lower_rate_takes_effect_at_once_without_a_burst() {
        let mut line = Line::new(256);
        let fast = rate(50);
        let slow = rate(2);
        let tickets: Vec<u64> = (0..200).map(|_| line.join().unwrap()).collect();
        line.state.call(fast, 1_000);
        assert_eq!(line.state.called, 50);
        line.state.call(slow, 1_500);
        assert_eq!(line.state.called, 75, "the half second at the old rate is kept");
        line.state.call(slow, 2_500);
        assert_eq!(line.state.called, 77, "then two a second");
        let _ = tickets;
    }

    fn heard_queue() -> Queue {
        Queue { rate: rate(10), idle_ms: 10_000, refresh_ms: 2_000 }
    }

    #[test]
    fn a_far_waiter_is_answered_from_what_the_host_heard() {
        let q = heard_queue();
        let heard = Heard::new(None, 7, 100, 1_000);
        assert_eq!(
            heard.estimate(&q, 1_000),
            Estimate::Queued(Waiting { position: 100, wait_seconds: 11 })
        );
        // Two seconds at 10 a second: twenty called since.
        assert_eq!(
            heard.estimate(&q, 3_000),
            Estimate::Queued(Waiting { position: 80, wait_seconds: 9 })
        );
        assert_eq!(heard.position_at(q.rate, 3_050), 80, "whole slots only");
        // Half of idle since Redis was asked: ask again, far or not.
        assert_eq!(
            heard.estimate(&q, 5_999),
            Estimate::Queued(Waiting { position: 51, wait_seconds: 6 })
        );
        assert_eq!(heard.estimate(&q, 6_000), Estimate::Ask);
        // A clock that went back asks.
        assert_eq!(heard.estimate(&q, 999), Estimate::Ask);
    }

    #[test]
    fn a_waiter_near_his_turn_asks_redis() {
        let q = heard_queue();
        // Within refresh (2 s, 20 slots) of his turn: asked about in Redis.
        assert_eq!(Heard::new(None, 7, 19, 1_000).estimate(&q, 1_000), Estimate::Ask);
        assert_eq!(
            Heard::new(None, 7, 20, 1_000).estimate(&q, 1_000),
            Estimate::Queued(Waiting { position: 20, wait_seconds: 3 })
        );
        assert_eq!(Heard::new(None, 7, 30, 1_000).estimate(&q, 2_100), Estimate::Ask);
        assert_eq!(Heard::new(None, 7, 0, 1_000).estimate(&q, 1_000), Estimate::Ask);
        assert_eq!(Heard::registered(1_000).estimate(&q, 1_000), Estimate::Ask, "not in line");
    }

    #[test]
    fn a_shown_place_never_goes_up() {
        let heard = Heard::new(None, 7, 100, 1_000);
        // Redis says 90 later: shown 90. Then 95 (a slower rate since a reload): still 90.
        let later = Heard::new(Some(Heard { shown: 85, ..heard }), 7, 90, 2_000);
        assert_eq!((later.position, later.shown), (90, 85));
        let again = Heard::new(Some(later), 7, 95, 3_000);
        assert_eq!(again.shown, 85);
        assert_eq!(again.position_at(rate(10), 3_000), 85);
        // Another ticket (he left and came back): a new place.
        assert_eq!(Heard::new(Some(again), 9, 300, 4_000).shown, 300);
        assert_eq!(again.as_shown(rate(10)), Waiting { position: 85, wait_seconds: 9 });
    }

    proptest::proptest! {
        /// Whatever Redis says and whenever he asks, the place shown to a waiter never goes
        /// up, and an estimate is never ahead of a line that calls at its pace.
        #[test]
        fn estimates_never_go_up_nor_run_ahead(
            per_second in 1u64..50,
            start in 0u64..5_000,
            steps in proptest::collection::vec((0u8..3, 0i64..2_000, 0u64..40), 1..100),
        ) {
            let q = Queue { rate: rate(per_second), idle_ms: 6_000, refresh_ms: 1_000 };
            let (mut now, mut left) = (1_000i64, 0u64);
            // The line calls at its pace since the start, and some ahead leave.
            let real_at = |now: i64, left: u64| {
                start.saturating_sub(per_second * (now - 1_000) as u64 / 1000 + left)
            };
            let mut real = real_at(now, left);
            let mut heard = Heard::new(None, 3, real, now);
            let mut last = heard.shown;
            for (what, later, gone) in steps {
                now += later;
                left += gone;
                real = real_at(now, left);
                let shown = match (what, heard.estimate(&q, now)) {
                    (0, _) | (_, Estimate::Ask) => {
                        heard = Heard::new(Some(heard), 3, real, now);
                        heard.shown
                    }
                    (_, Estimate::Queued(w)) => {
                        proptest::prop_assert!(w.position >= real.min(heard.shown));
                        heard.shown = w.position;
                        w.position
                    }
                };
                proptest::prop_assert!(shown <= last, "{} after {}", shown, last);
                last = shown;
            }
        }
    }

    proptest::proptest! {
        /// Any crowd: joins, asks and silences at random times. Calls follow tickets, no
        /// waiter's place goes up while he waits, and admissions never outrun the pace.
        #[test]
        fn the_line_keeps_its_promises(
            per_second in 1u64..50,
            steps in proptest::collection::vec((0u8..4, 0usize..64, 0i64..400), 1..400),
        ) {
            let r = rate(per_second);
            let mut line = Line::new(128);
            let mut live: Vec<u64> = Vec::new();
            let mut shown: std::collections::HashMap<u64, u64> = Default::default();
            let (start, mut now, mut admitted) = (1_000i64, 1_000i64, 0u64);
            for (what, pick, later) in steps {
                now += later;
                match what {
                    0 => {
                        if let Ok(t) = line.join() {
                            live.push(t);
                        }
                    }
                    1 | 2 if !live.is_empty() => {
                        let t = live[pick % live.len()];
                        match line.ask(t, r, now) {
                            Place::Called => {
                                // Everyone who took an earlier ticket and is still in line was
                                // called before him.
                                let ahead = live.iter().filter(|&&o| o < t).count() as u64;
                                proptest::prop_assert!(ahead <= line.state.called);
                                live.retain(|&o| o != t);
                                admitted += 1;
                            }
                            Place::Waiting(Waiting { position, wait_seconds }) => {
                                if let Some(&before) = shown.get(&t) {
                                    proptest::prop_assert!(position <= before);
                                }
                                shown.insert(t, position);
                                proptest::prop_assert!(wait_seconds >= 1);
                            }
                        }
                    }
                    3 if !live.is_empty() => {
                        let t = live.remove(pick % live.len());
                        line.leave(t);
                    }
                    _ => {}
                }
                let earned = per_second * (now - start) as u64 / 1000 + per_second;
                proptest::prop_assert!(admitted <= earned, "{} admitted, {} earned", admitted, earned);
                proptest::prop_assert_eq!(line.state.waiting, live.len() as u64);
                proptest::prop_assert!(line.state.called <= line.state.waiting);
            }
        }
    }
}
