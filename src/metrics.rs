//! The zones' counters in Prometheus' text exposition format (version 0.0.4). Plain Rust: the
//! glue (`endpoints.rs`) reads the zones, this writes the text.

use core::fmt::Write;

use crate::line::{LineFigures, WAIT_BUCKETS};
use crate::sale::{Outcome, COUNTED};

/// One zone's figures, read from its shared memory.
#[derive(Clone, Debug, Default)]
pub struct ZoneMetrics {
    pub name: String,
    pub requests: [u64; COUNTED],
    pub permits: u64,
    /// Buyers registered for the pre-queue's draw and not drawn yet.
    pub prequeued: u64,
    pub granted: u64,
    pub revoked: u64,
    pub expired: u64,
    pub tokens_valid: u64,
    pub tokens_refused: u64,
    /// For a zone kept in Redis: round trips, failed ones, and whether Redis answers (1 or 0).
    pub redis_calls: Option<u64>,
    pub redis_errors: Option<u64>,
    /// The failed round trips by kind, in the order of `remote::Failure::KINDS`.
    pub redis_failures: Option<[u64; 5]>,
    pub redis_up: Option<u64>,
    /// For a zone with a state file: records it could not take, and whether it takes them.
    pub state_errors: Option<u64>,
    pub state_up: Option<u64>,
    /// The API's override, else the largest cap a location sets; `None` is unlimited.
    pub max_permits: Option<u64>,
    pub bytes_used: u64,
    pub bytes_total: u64,
    /// For a zone kept here that sells several items (`flash_sale_item`): the items it has
    /// (with a permit, a registration or a stock set through the API), and those at their
    /// cap. Counts per zone, never a sample per item: see [`render`].
    pub items: Option<u64>,
    pub items_sold_out: Option<u64>,
    /// For a zone with a line (`flash_sale_queue`): its figures.
    pub line: Option<LineFigures>,
}

/// A metric with one sample per zone: name, type, help, and the zone's value (if any).
type Family = (&'static str, &'static str, &'static str, fn(&ZoneMetrics) -> Option<u64>);

/// Renders every zone, metric by metric, as Prometheus groups samples.
pub fn render(zones: &[ZoneMetrics]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &dyn Fn(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        samples(&mut out);
    };
    family(
        "flash_sale_requests_total",
        "counter",
        "Requests the gate decided, by zone and outcome.",
        &|out| {
            for zone in zones {
                for (outcome, dry_run) in Outcome::counted() {
                    let count = zone.requests[outcome.counter(dry_run)];
                    // Dry-run rows only once they happen.
                    if dry_run && count == 0 {
                        continue;
                    }
                    let status = outcome.name(dry_run);
                    let _ = writeln!(
                        out,
                        "flash_sale_requests_total{{zone=\"{}\",status=\"{status}\"}} {count}",
                        escape(&zone.name)
                    );
                }
            }
        },
    );
    // Items are counted per zone, with no label per item: a drop of ten thousand SKUs would
    // be ten thousand series per family, which Prometheus keeps (and a scrape sends) for
    // every item ever sold. One item's figures are in the admin API (`zones/NAME/items`).
    let simple: [Family; 17] = [
        ("flash_sale_permits", "gauge", "Permits held now.", |z| Some(z.permits)),
        ("flash_sale_prequeued", "gauge", "Buyers waiting for the pre-queue's draw.", |z| {
            Some(z.prequeued)
        }),
        ("flash_sale_permits_granted_total", "counter", "Permits granted.", |z| Some(z.granted)),
        ("flash_sale_permits_revoked_total", "counter", "Permits revoked.", |z| Some(z.revoked)),
        ("flash_sale_permits_expired_total", "counter", "Permits expired.", |z| Some(z.expired)),
        ("flash_sale_max_permits", "gauge", "The cap on permits.", |z| z.max_permits),
        ("flash_sale_tokens_valid_total", "counter", "Tokens flash_sale_verify passed.", |z| {
            Some(z.tokens_valid)
        }),
        ("flash_sale_tokens_refused_total", "counter", "Tokens flash_sale_verify refused.", |z| {
            Some(z.tokens_refused)
        }),
        ("flash_sale_redis_calls_total", "counter", "Round trips to Redis.", |z| z.redis_calls),
        ("flash_sale_redis_up", "gauge", "Whether Redis answered the last round trip.", |z| {
            z.redis_up
        }),
        (
            "flash_sale_state_errors_total",
            "counter",
            "Records the state file could not take (a full disk, an I/O error).",
            |z| z.state_errors,
        ),
        ("flash_sale_state_up", "gauge", "Whether the state file takes records.", |z| z.state_up),
        (
            "flash_sale_items",
            "gauge",
            "Items the zone has: with a permit, a registration or a stock set through the API.",
            |z| z.items,
        ),
        ("flash_sale_items_sold_out", "gauge", "Items at their cap.", |z| z.items_sold_out),
        ("flash_sale_queue_waiting", "gauge", "Buyers waiting in the line now.", |z| {
            z.line.map(|l| l.waiting)
        }),
        ("flash_sale_queue_admitted_total", "counter", "Buyers admitted from the line.", |z| {
            z.line.map(|l| l.admitted)
        }),
        (
            "flash_sale_queue_left_total",
            "counter",
            "Waiters who left the line, silent for its idle time.",
            |z| z.line.map(|l| l.left),
        ),
    ];
    for (name, kind, help, value) in simple {
        family(name, kind, help, &|out| {
            for zone in zones {
                if let Some(v) = value(zone) {
                    let _ = writeln!(out, "{name}{{zone=\"{}\"}} {v}", escape(&zone.name));
                }
            }
        });
    }
    family(
        "flash_sale_redis_errors_total",
        "counter",
        "Round trips to Redis that failed, by kind: timeout, connection, auth, reply, local.",
        &|out| {
            for zone in zones {
                let Some(failures) = zone.redis_failures else {
                    continue;
                };
                for (kind, count) in crate::remote::Failure::KINDS.iter().zip(failures) {
                    let _ = writeln!(
                        out,
                        "flash_sale_redis_errors_total{{zone=\"{}\",kind=\"{kind}\"}} {count}",
                        escape(&zone.name)
                    );
                }
            }
        },
    );
    family(
        "flash_sale_queue_wait_seconds",
        "histogram",
        "How long buyers admitted from the line waited in it.",
        &|out| {
            for zone in zones {
                let Some(line) = zone.line else {
                    continue;
                };
                let name = escape(&zone.name);
                let mut below = 0;
                for (le, count) in WAIT_BUCKETS.iter().zip(line.waited) {
                    below += count;
                    let _ = writeln!(
                        out,
                        "flash_sale_queue_wait_seconds_bucket{{zone=\"{name}\",le=\"{le}\"}} {below}"
                    );
                }
                let all: u64 = line.waited.iter().sum();
                let _ = writeln!(
                    out,
                    "flash_sale_queue_wait_seconds_bucket{{zone=\"{name}\",le=\"+Inf\"}} {all}"
                );
                let sum = line.waited_ms as f64 / 1000.0;
                let _ = writeln!(out, "flash_sale_queue_wait_seconds_sum{{zone=\"{name}\"}} {sum}");
                let _ =
                    writeln!(out, "flash_sale_queue_wait_seconds_count{{zone=\"{name}\"}} {all}");
            }
        },
    );
    family(
        "flash_sale_zone_bytes",
        "gauge",
        "Shared memory of the zone, used and total.",
        &|out| {
            for zone in zones {
                let name = escape(&zone.name);
                let _ = writeln!(
                    out,
                    "flash_sale_zone_bytes{{zone=\"{name}\",kind=\"used\"}} {}",
                    zone.bytes_used
                );
                let _ = writeln!(
                    out,
                    "flash_sale_zone_bytes{{zone=\"{name}\",kind=\"total\"}} {}",
                    zone.bytes_total
                );
            }
        },
    );
    out
}

/// Label values escape backslash, quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_with_a_sample_per_zone() {
        let mut laptop = ZoneMetrics {
            name: "laptop".into(),
            permits: 3,
            prequeued: 12,
            granted: 4,
            revoked: 1,
            tokens_refused: 2,
            redis_calls: Some(9),
            redis_errors: Some(1),
            redis_failures: Some([1, 0, 0, 0, 0]),
            redis_up: Some(0),
            state_errors: Some(7),
            state_up: Some(1),
            max_permits: Some(3),
            items: Some(40),
            items_sold_out: Some(6),
            bytes_used: 45_056,
            bytes_total: 1_048_576,
            line: Some(LineFigures {
                waiting: 7,
                admitted: 3,
                left: 1,
                waited: [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                waited_ms: 7_500_500,
                ..LineFigures::default()
            }),
            ..ZoneMetrics::default()
        };
        laptop.requests[Outcome::Admitted.counter(false)] = 4;
        laptop.requests[Outcome::Blocked.counter(true)] = 2;
        laptop.requests[Outcome::Permitted.counter(true)] = 5;
        let phone = ZoneMetrics { name: "ph\"one".into(), ..ZoneMetrics::default() };
        let text = render(&[laptop, phone]);
        for line in [
            "# TYPE flash_sale_requests_total counter",
            "flash_sale_requests_total{zone=\"laptop\",status=\"ADMITTED\"} 4",
            "flash_sale_requests_total{zone=\"laptop\",status=\"SOLD_OUT\"} 0",
            "flash_sale_requests_total{zone=\"laptop\",status=\"BLOCKED_DRY_RUN\"} 2",
            "flash_sale_requests_total{zone=\"ph\\\"one\",status=\"NO_KEY\"} 0",
            "flash_sale_permits{zone=\"laptop\"} 3",
            "flash_sale_prequeued{zone=\"laptop\"} 12",
            "flash_sale_permits_granted_total{zone=\"laptop\"} 4",
            "flash_sale_permits_revoked_total{zone=\"laptop\"} 1",
            "flash_sale_permits_expired_total{zone=\"laptop\"} 0",
            "flash_sale_max_permits{zone=\"laptop\"} 3",
            "flash_sale_tokens_valid_total{zone=\"laptop\"} 0",
            "flash_sale_tokens_refused_total{zone=\"laptop\"} 2",
            "flash_sale_redis_calls_total{zone=\"laptop\"} 9",
            "flash_sale_redis_errors_total{zone=\"laptop\",kind=\"timeout\"} 1",
            "flash_sale_redis_errors_total{zone=\"laptop\",kind=\"auth\"} 0",
            "flash_sale_redis_up{zone=\"laptop\"} 0",
            "flash_sale_state_errors_total{zone=\"laptop\"} 7",
            "flash_sale_state_up{zone=\"laptop\"} 1",
            "# TYPE flash_sale_items gauge",
            "flash_sale_items{zone=\"laptop\"} 40",
            "flash_sale_items_sold_out{zone=\"laptop\"} 6",
            "flash_sale_zone_bytes{zone=\"laptop\",kind=\"used\"} 45056",
            "flash_sale_zone_bytes{zone=\"laptop\",kind=\"total\"} 1048576",
            "flash_sale_queue_waiting{zone=\"laptop\"} 7",
            "flash_sale_queue_admitted_total{zone=\"laptop\"} 3",
            "flash_sale_queue_left_total{zone=\"laptop\"} 1",
            "# TYPE flash_sale_queue_wait_seconds histogram",
            "flash_sale_queue_wait_seconds_bucket{zone=\"laptop\",le=\"1\"} 1",
            "flash_sale_queue_wait_seconds_bucket{zone=\"laptop\",le=\"5\"} 2",
            "flash_sale_queue_wait_seconds_bucket{zone=\"laptop\",le=\"3600\"} 2",
            "flash_sale_queue_wait_seconds_bucket{zone=\"laptop\",le=\"+Inf\"} 3",
            "flash_sale_queue_wait_seconds_sum{zone=\"laptop\"} 7500.5",
            "flash_sale_queue_wait_seconds_count{zone=\"laptop\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("SOLD_OUT_DRY_RUN"), "empty dry-run counters are left out");
        assert_eq!(text.matches("status=\"PERMITTED\"}").count(), 2, "one series per zone");
        assert!(!text.contains("flash_sale_max_permits{zone=\"ph"), "no cap, no sample");
        assert!(!text.contains("flash_sale_redis_up{zone=\"ph"), "a local zone has no Redis");
        assert!(!text.contains("flash_sale_state_up{zone=\"ph"), "no state file, no sample");
        assert!(!text.contains("flash_sale_queue_waiting{zone=\"ph"), "no line, no sample");
        assert!(!text.contains("flash_sale_items{zone=\"ph"), "one item, no item figures");
        assert!(!text.contains("item=\""), "no label per item");
        assert_eq!(text.matches("# TYPE").count(), 21);
    }
}
