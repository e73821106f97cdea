//! The waiting line, in plain Rust: the pace at which it calls waiters in, where a waiter
//! stands, and how long he will wait.
//!
//! A buyer who may buy (no permit, room under the cap, the draw passed) takes a ticket, the
//! next number, once per key. The line calls waiters in at its rate: a bucket fills with slots
//! at `rate`, holding at most one second's worth (at least one slot), and each slot calls the
//! first live waiter not yet called. A called waiter is admitted when he next asks. A waiter
//! who stops asking for `idle` leaves; if he had been called, his slot passes to the next
//! waiter, so that the line never stalls on people who left. So:
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

    /// As `limit_req` writes it: `20r/s`, or `600r/m` for rates under one a second.
    pub fn to_text(self) -> String {
        if self.0 % 1000 == 0 {
            format!("{}r/s", self.0 / 1000)
        } else {
            format!("{}r/m", self.0 * 60 / 1000)
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
    /// Fills the bucket for the time since it was last filled, at `rate`, up to its burst.
    /// The first fill starts it full: the first buyers of an empty line do not wait.
    pub fn fill(&mut self, rate: Rate, now_ms: i64) {
        let elapsed = if self.filled_ms == 0 {
            i64::MAX
        } else {
            now_ms.saturating_sub(self.filled_ms).max(0)
        };
        let earned = rate.0.saturating_mul(elapsed as u64);
        self.units = self.units.saturating_add(earned).min(rate.burst());
        // A clock that went back does not move the fill time back: no slot is earned twice.
        self.filled_ms = self.filled_ms.max(now_ms);
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Waiters admitted since the zone started, for the metrics.
    pub admitted: u64,
    /// Waiters who left, silent for `idle`, since the zone started.
    pub left: u64,
}

/// Where a waiter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Called in: he may come in now.
    Called,
    /// Waiting: `position` waiters ahead of him are still to be called, which at the line's
    /// pace takes `wait_seconds`.
    Waiting { position: u64, wait_seconds: u64 },
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
        let live = self.between(head, next_ticket);
        if live == 0 {
            return next_ticket;
        }
        let start = self.slot(head);
        let before_start = self.prefix(start);
        let total = self.prefix(self.tree.len());
        // In ring order from the head's slot: its slots to the end first, then the wrap.
        let slot = if total > before_start { self.find(before_start + 1) } else { self.find(1) };
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

    /// Calls waiters in with the slots the bucket holds at `now_ms`.
    pub fn call(&mut self, rate: Rate, now_ms: i64) {
        self.pace.fill(rate, now_ms);
        let uncalled = self.waiting - self.called;
        self.called += self.pace.take(uncalled);
    }

    /// Where the waiter with `ticket` stands; call [`LineState::call`] first.
    pub fn place(&self, ranks: &Ranks<'_>, ticket: u64, rate: Rate) -> Place {
        let ahead = ranks.between(self.head, ticket);
        if ahead < self.called {
            return Place::Called;
        }
        let position = ahead - self.called;
        // His own slot too: he comes in with the slot after the `position` before him.
        Place::Waiting { position, wait_seconds: rate.seconds_for(position + 1) }
    }

    /// The waiter with `ticket` leaves the line: admitted (`called` is true: he used his
    /// call), or gone. A called waiter's slot passes to the next waiter; one nobody is left to
    /// take goes back to the bucket.
    pub fn leave(&mut self, ranks: &mut Ranks<'_>, ticket: u64, admitted: bool, rate: Rate) {
        if ticket < self.head || ticket >= self.next_ticket || self.waiting == 0 {
            return;
        }
        ranks.add(ranks.slot(ticket), -1);
        self.waiting -= 1;
        if admitted {
            self.called = self.called.saturating_sub(1);
            self.admitted += 1;
        } else {
            self.left += 1;
        }
        if self.called > self.waiting {
            self.pace.give_back(self.called - self.waiting, rate);
            self.called = self.waiting;
        }
        if self.waiting == 0 {
            self.head = self.next_ticket;
        }
    }

    /// Changes the pace from `now_ms` on: the calls due at the old rate until now are made,
    /// and what is left in the bucket is capped at the new burst, so that no change of rate
    /// lets a burst through.
    pub fn set_rate(&mut self, old: Rate, new: Rate, now_ms: i64) {
        self.call(old, now_ms);
        self.pace.give_back(0, new);
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
                self.state.leave(&mut Ranks::new(&mut self.tree), ticket, true, rate);
            }
            place
        }
        fn leave(&mut self, ticket: u64, rate: Rate) {
            self.state.leave(&mut Ranks::new(&mut self.tree), ticket, false, rate);
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
        assert_eq!(Rate::from_milli(10_000 / 60 * 60 / 60).unwrap().to_text(), "9r/m");
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
            Place::Waiting { position: 0, wait_seconds: 1 },
            "the eight called waiters ahead, who have not come in yet, are not counted"
        );
        assert_eq!(
            line.ask(tickets[50], r, 1_000),
            Place::Waiting { position: 40, wait_seconds: 5 }
        );
        // One second later ten more are called: 2..20 are called, ticket 21 is next.
        assert_eq!(
            line.ask(tickets[50], r, 2_000),
            Place::Waiting { position: 30, wait_seconds: 4 }
        );
        assert_eq!(line.ask(tickets[19], r, 2_000), Place::Called);
        assert_eq!(
            line.ask(tickets[20], r, 2_000),
            Place::Waiting { position: 0, wait_seconds: 1 }
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
        line.leave(tickets[0], r);
        line.leave(tickets[1], r);
        assert_eq!(line.ask(tickets[2], r, 1_000), Place::Called);
        assert_eq!(line.ask(tickets[3], r, 1_000), Place::Called);
        assert_eq!(line.ask(tickets[4], r, 1_000), Place::Waiting { position: 0, wait_seconds: 1 });
        // Uncalled waiters ahead who leave move a waiter up.
        assert_eq!(line.ask(tickets[9], r, 1_000), Place::Waiting { position: 5, wait_seconds: 3 });
        line.leave(tickets[5], r);
        assert_eq!(line.ask(tickets[9], r, 1_000), Place::Waiting { position: 4, wait_seconds: 3 });
    }

    #[test]
    fn an_empty_line_keeps_at_most_one_second_for_the_next_buyers() {
        let mut line = Line::new(256);
        let r = rate(5);
        let t = line.join().unwrap();
        assert_eq!(line.ask(t, r, 1_000), Place::Called);
        assert_eq!(line.state.waiting, 0);
        // An hour later, a crowd of 100: five come in at once, the rest wait.
        let tickets: Vec<u64> = (0..100).map(|_| line.join().unwrap()).collect();
        let now = 3_601_000;
        let called = tickets.iter().filter(|&&t| line.ask(t, r, now) == Place::Called).count();
        assert_eq!(called, 5);
    }

    #[test]
    fn a_full_ring_refuses_until_its_oldest_waiters_leave() {
        let mut line = Line::new(4);
        let r = rate(1);
        let tickets: Vec<u64> = (0..4).map(|_| line.join().unwrap()).collect();
        assert_eq!(line.join(), Err(LineFull::Full));
        line.leave(tickets[1], r);
        assert_eq!(line.join(), Err(LineFull::Full), "the oldest still holds the ring");
        line.leave(tickets[0], r);
        let t = line.join().unwrap();
        assert_eq!(t, 5);
        assert_eq!(line.ask(tickets[3], r, 1_000), Place::Waiting { position: 0, wait_seconds: 1 });
        assert_eq!(line.ask(t, r, 1_000), Place::Waiting { position: 1, wait_seconds: 2 });
    }

    #[test]
    fn a_lower_rate_takes_effect_at_once_without_a_burst() {
        let mut line = Line::new(256);
        let fast = rate(50);
        let slow = rate(2);
        let tickets: Vec<u64> = (0..200).map(|_| line.join().unwrap()).collect();
        line.state.call(fast, 1_000);
        assert_eq!(line.state.called, 50);
        line.state.set_rate(fast, slow, 1_500);
        line.state.call(slow, 1_500);
        assert_eq!(line.state.called, 75, "the half second at the old rate is kept");
        line.state.call(slow, 2_500);
        assert_eq!(line.state.called, 77, "then two a second");
        let _ = tickets;
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
                            Place::Waiting { position, wait_seconds } => {
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
                        line.leave(t, r);
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
