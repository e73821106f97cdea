//! Whether something the gate depends on works (Redis, the state file's disk), shared by every
//! worker through the zone: one log line when it fails and one when it comes back, and while
//! it is down one try per interval, so that a dead dependency costs one failure a second, not
//! one per request. Atomics only, no lock; plain Rust.

use core::sync::atomic::{AtomicI64, Ordering};

/// How often one request tries again while a dependency is down, in milliseconds.
pub const RETRY_MS: i64 = 1000;

/// A dependency's health: whether it is down, since when, and when the next try is due.
#[repr(C)]
#[derive(Default)]
pub struct Health {
    /// When it last failed; 0 while it works.
    down_since_ms: AtomicI64,
    /// While down: when one request may try again.
    retry_at_ms: AtomicI64,
}

/// What a failure or a success changed, for one log line per incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// This failure started an incident.
    WentDown,
    /// This success ended an incident that lasted this long.
    CameBack {
        down_ms: i64,
    },
    Unchanged,
}

/// Whether this caller takes the turn due at `*next_ms` (one caller per turn, across workers);
/// the next turn is then `period_ms` later.
pub fn claim_turn(next_ms: &AtomicI64, now_ms: i64, period_ms: i64) -> bool {
    let due = next_ms.load(Ordering::Acquire);
    now_ms >= due
        && next_ms
            .compare_exchange(due, now_ms + period_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}

impl Health {
    /// Whether a request may use the dependency now: always while it works; while it is down,
    /// one request per host every [`RETRY_MS`].
    pub fn may_try(&self, now_ms: i64) -> bool {
        if self.down_since_ms.load(Ordering::Acquire) == 0 {
            return true;
        }
        claim_turn(&self.retry_at_ms, now_ms, RETRY_MS)
    }

    pub fn is_down(&self) -> bool {
        self.down_since_ms.load(Ordering::Acquire) != 0
    }

    /// It failed at `now_ms`.
    pub fn failed(&self, now_ms: i64) -> Change {
        // 0 means "up", so a clock at 0 still records a failure.
        let since = now_ms.max(1);
        self.retry_at_ms.fetch_max(now_ms + RETRY_MS, Ordering::AcqRel);
        match self.down_since_ms.compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Change::WentDown,
            Err(_) => Change::Unchanged,
        }
    }

    /// It worked at `now_ms` for a use that started at `started_ms`. Only a use started after
    /// the failure proves it is back: an older one may have finished just before it failed.
    pub fn worked(&self, started_ms: i64, now_ms: i64) -> Change {
        let since = self.down_since_ms.load(Ordering::Acquire);
        if since == 0 || started_ms < since {
            return Change::Unchanged;
        }
        match self.down_since_ms.compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Change::CameBack { down_ms: now_ms - since },
            Err(_) => Change::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_incident_and_one_try_a_second() {
        let health = Health::default();
        assert!(health.may_try(0) && !health.is_down());
        assert_eq!(health.failed(1_000), Change::WentDown);
        assert_eq!(health.failed(1_001), Change::Unchanged, "the same incident");
        assert!(health.is_down());
        assert!(!health.may_try(1_500), "down: no try before the second is up");
        assert!(health.may_try(2_001), "one request tries again");
        assert!(!health.may_try(2_002), "and only one");
        assert_eq!(health.worked(900, 2_003), Change::Unchanged, "started before the failure");
        assert_eq!(health.worked(2_001, 2_050), Change::CameBack { down_ms: 1_050 });
        assert_eq!(health.worked(2_060, 2_070), Change::Unchanged);
        assert!(health.may_try(2_071));
    }

    #[test]
    fn turns_go_to_one_caller_per_period() {
        let next = AtomicI64::new(0);
        assert!(claim_turn(&next, 100, 1_000));
        assert!(!claim_turn(&next, 500, 1_000));
        assert!(claim_turn(&next, 1_100, 1_000));
    }
}
