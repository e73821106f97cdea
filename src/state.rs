//! The state file of `flash_sale_zone ... state=PATH`, in plain Rust: its records, and how a
//! zone's permits are rebuilt from it.
//!
//! The file is a journal of text lines. Workers append a line for every change as it happens
//! (a grant, a revocation, a clearing); at shutdown the master rewrites it as a snapshot (the
//! permits, the next number and the counters). Records carry permit numbers, which are unique
//! for the life of the zone, so lines written by several workers at once may land in any order:
//! a revocation names the number it revokes, and a clearing the first number it spares.
//!
//! ```text
//! flash-sale-state 1 6c6170746f70 2468747470...      header: zone name and key, in hex
//! G 7 1629000000000 0 616c696365                    grant: number, granted, expires (0 never), key
//! G 8 1629000000000 0 626f62 7265642d3432           ... and its item, in a zone of several
//! R 7                                               revoke permit 7
//! X 12                                              revoke every permit numbered below 12
//! N 12                                              the next number (snapshot)
//! C granted 11                                      a counter (snapshot)
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use crate::sale::PermitInfo;

const MAGIC: &str = "flash-sale-state 1";

/// The first line of a zone's state file.
pub fn header(zone: &str, key_spec: &[u8]) -> String {
    format!("{MAGIC} {} {}\n", hex(zone.as_bytes()), hex(key_spec))
}

pub fn grant(p: &PermitInfo) -> String {
    let item = if p.item.is_empty() { String::new() } else { format!(" {}", hex(&p.item)) };
    format!("G {} {} {} {}{item}\n", p.seq, p.granted_ms, p.expires_ms.unwrap_or(0), hex(&p.key))
}

pub fn revoke(seq: u64) -> String {
    format!("R {seq}\n")
}

/// Every permit numbered below `next_seq` is gone.
pub fn clear(next_seq: u64) -> String {
    format!("X {next_seq}\n")
}

/// A whole zone as one file: header, next number, counters, permits.
pub fn snapshot(
    zone: &str,
    key_spec: &[u8],
    next_seq: u64,
    counters: &[(String, u64)],
    permits: &[PermitInfo],
) -> String {
    let mut out = header(zone, key_spec);
    let _ = writeln!(out, "N {next_seq}");
    for (name, value) in counters {
        let _ = writeln!(out, "C {name} {value}");
    }
    for p in permits {
        out.push_str(&grant(p));
    }
    out
}

/// What a state file holds, and what had to be skipped to read it.
#[derive(Debug, Default, PartialEq)]
pub struct Replay {
    /// The permits in force, in order of their numbers.
    pub permits: Vec<PermitInfo>,
    /// The number the next permit gets: never one the file has seen.
    pub next_seq: u64,
    pub counters: Vec<(String, u64)>,
    /// Why lines (or the whole file) were skipped, one reason per entry.
    pub skipped: Vec<String>,
    /// The numbers the file revokes, and the number below which it revokes every permit: a
    /// permit a zone holds with one of them is gone, whatever the zone still says.
    pub revoked: HashSet<u64>,
    pub cleared_below: u64,
    /// The next number its last snapshot gave (0 without one): the snapshot listed every
    /// permit in force below it, so one below it that the file lacks was revoked, cleared or
    /// expired since (by another generation of nginx, perhaps), not lost.
    pub snapshot_next: u64,
}

impl Replay {
    /// Whether the file says the permit numbered `seq` is gone.
    pub fn gone(&self, seq: u64) -> bool {
        seq < self.cleared_below || seq < self.snapshot_next || self.revoked.contains(&seq)
    }
}

/// Rebuilds a zone's permits from its state file. Permits expired by `now_ms` are left out.
pub fn replay(text: &[u8], zone: &str, key_spec: &[u8], now_ms: i64) -> Replay {
    let mut replay = Replay { next_seq: 1, ..Replay::default() };
    if text.is_empty() {
        return replay;
    }
    let mut lines: Vec<&[u8]> = text.split(|&c| c == b'\n').collect();
    // The text after the last newline is a record cut short by a crash (or nothing at all).
    if let Some(torn) = lines.pop().filter(|l| !l.is_empty()) {
        replay.skipped.push(format!("a torn last record of {} bytes", torn.len()));
    }
    let Some((first, records)) = lines.split_first() else {
        return replay;
    };
    let expected = header(zone, key_spec);
    if *first != expected.trim_end().as_bytes() {
        let what = match core::str::from_utf8(first).ok().and_then(|h| h.strip_prefix(MAGIC)) {
            Some(rest) => describe_header(rest),
            None => "is not a flash sale state file".to_string(),
        };
        replay.skipped = vec![format!("the whole file: it {what}")];
        return replay;
    }

    let mut granted: BTreeMap<u64, PermitInfo> = BTreeMap::new();
    let mut revoked: HashSet<u64> = HashSet::new();
    let mut cleared_below = 0;
    for (i, line) in records.iter().enumerate() {
        let number = i + 2;
        match parse_record(line) {
            Some(Record::Grant(p)) => {
                replay.next_seq = replay.next_seq.max(p.seq + 1);
                granted.insert(p.seq, p);
            }
            Some(Record::Revoke(seq)) => {
                revoked.insert(seq);
            }
            Some(Record::Clear(below)) => {
                cleared_below = cleared_below.max(below);
                replay.next_seq = replay.next_seq.max(below);
            }
            Some(Record::Next(next)) => {
                replay.next_seq = replay.next_seq.max(next);
                replay.snapshot_next = next;
            }
            Some(Record::Counter(name, value)) => replay.counters.push((name, value)),
            None => replay.skipped.push(format!("line {number}: not a record")),
        }
    }
    // A key granted twice for an item (revoked in between) keeps its latest permit; a buyer's
    // permits for several items are all kept.
    let mut by_key: BTreeMap<(Vec<u8>, Vec<u8>), PermitInfo> = BTreeMap::new();
    for (seq, p) in granted {
        if seq >= cleared_below
            && !revoked.contains(&seq)
            && p.expires_ms.is_none_or(|e| e > now_ms)
        {
            by_key.insert((p.key.clone(), p.item.clone()), p);
        }
    }
    replay.permits = by_key.into_values().collect();
    replay.permits.sort_by_key(|p| p.seq);
    replay.revoked = revoked;
    replay.cleared_below = cleared_below;
    replay
}

fn describe_header(rest: &str) -> String {
    let mut fields = rest.split_whitespace().map(unhex);
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(zone), Some(key)) => format!(
            "belongs to zone \"{}\" with the key \"{}\"",
            String::from_utf8_lossy(&zone),
            String::from_utf8_lossy(&key)
        ),
        _ => "has a damaged header".to_string(),
    }
}

enum Record {
    Grant(PermitInfo),
    Revoke(u64),
    Clear(u64),
    Next(u64),
    Counter(String, u64),
}

fn parse_record(line: &[u8]) -> Option<Record> {
    let line = core::str::from_utf8(line).ok()?;
    let fields: Vec<&str> = line.split(' ').collect();
    let number = |s: &str| s.parse::<u64>().ok();
    Some(match fields.as_slice() {
        ["G", seq, granted, expires, key, item @ ..] if item.len() <= 1 => {
            let expires: i64 = expires.parse().ok()?;
            let key =
                unhex(key).filter(|k| !k.is_empty() && k.len() <= crate::sale::MAX_KEY_LEN)?;
            let item = match item.first() {
                Some(item) => {
                    unhex(item).filter(|i| !i.is_empty() && i.len() <= crate::sale::MAX_ITEM_LEN)?
                }
                None => Vec::new(),
            };
            Record::Grant(PermitInfo {
                key,
                item,
                seq: number(seq).filter(|&s| s > 0)?,
                granted_ms: granted.parse().ok()?,
                expires_ms: (expires != 0).then_some(expires),
            })
        }
        ["R", seq] => Record::Revoke(number(seq)?),
        ["X", below] => Record::Clear(number(below)?),
        ["N", next] => Record::Next(number(next)?),
        ["C", name, value] if !name.is_empty() => Record::Counter(name.to_string(), number(value)?),
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(key: &str, seq: u64, expires_ms: Option<i64>) -> PermitInfo {
        PermitInfo {
            key: key.as_bytes().to_vec(),
            item: vec![],
            seq,
            granted_ms: 1_000,
            expires_ms,
        }
    }

    fn keys(r: &Replay) -> Vec<(String, u64)> {
        r.permits.iter().map(|p| (String::from_utf8_lossy(&p.key).into_owned(), p.seq)).collect()
    }

    #[test]
    fn a_journal_replays_in_any_order() {
        let mut text = header("laptop", b"$http_authorization");
        text += &grant(&permit("alice", 1, None));
        text += &revoke(2); // written before the grant it revokes
        text += &grant(&permit("bob", 2, None));
        text += &grant(&permit("carol", 3, Some(5_000)));
        text += &grant(&permit("dave", 4, Some(500)));
        let r = replay(text.as_bytes(), "laptop", b"$http_authorization", 1_000);
        assert_eq!(keys(&r), [("alice".into(), 1), ("carol".into(), 3)]);
        assert_eq!(r.next_seq, 5, "numbers are never reused, even those revoked or expired");
        assert!(r.skipped.is_empty());
        assert_eq!(r.permits[1].expires_ms, Some(5_000));
    }

    #[test]
    fn a_clearing_revokes_what_came_before_it() {
        let mut text = header("z", b"$k");
        text += &grant(&permit("a", 1, None));
        text += &grant(&permit("b", 2, None));
        text += &clear(3);
        text += &grant(&permit("a", 3, None));
        let r = replay(text.as_bytes(), "z", b"$k", 0);
        assert_eq!(keys(&r), [("a".into(), 3)]);
        assert_eq!(r.next_seq, 4);
    }

    #[test]
    fn a_snapshot_round_trips() {
        let permits = vec![permit("a", 3, None), permit("b\n x", 9, Some(9_000))];
        let counters = vec![("granted".to_string(), 11), ("requests.ADMITTED".to_string(), 40)];
        let text = snapshot("z", b"$k", 12, &counters, &permits);
        let r = replay(text.as_bytes(), "z", b"$k", 0);
        assert_eq!(r.permits, permits);
        assert_eq!((r.next_seq, r.counters), (12, counters));
    }

    #[test]
    fn a_torn_last_record_is_skipped_and_said() {
        let mut text = header("z", b"$k");
        text += &grant(&permit("a", 1, None));
        text += "G 2 1000 0 62";
        let r = replay(text.as_bytes(), "z", b"$k", 0);
        assert_eq!(keys(&r), [("a".into(), 1)]);
        assert_eq!(r.skipped, ["a torn last record of 13 bytes"]);
    }

    #[test]
    fn damaged_lines_are_skipped_one_by_one_and_the_rest_kept() {
        let mut text = header("z", b"$k");
        text += &grant(&permit("a", 1, None));
        text += "G x 1000 0 62\nQ 1\nG 3 1000 0 6\n\u{0}\u{1}\n";
        text += &grant(&permit("b", 5, None));
        let r = replay(text.as_bytes(), "z", b"$k", 0);
        assert_eq!(keys(&r), [("a".into(), 1), ("b".into(), 5)]);
        assert_eq!(r.skipped.len(), 4);
        assert_eq!(r.skipped[0], "line 3: not a record");
    }

    #[test]
    fn another_zones_file_is_skipped_whole_and_named() {
        let mut text = header("phone", b"$cookie_uid");
        text += &grant(&permit("a", 1, None));
        let r = replay(text.as_bytes(), "laptop", b"$http_authorization", 0);
        assert!(r.permits.is_empty());
        assert_eq!(
            r.skipped,
            ["the whole file: it belongs to zone \"phone\" with the key \"$cookie_uid\""]
        );
        let r = replay(b"hello\nworld\n", "laptop", b"$k", 0);
        assert_eq!(r.skipped, ["the whole file: it is not a flash sale state file"]);
        assert_eq!(replay(b"", "laptop", b"$k", 0), Replay { next_seq: 1, ..Replay::default() });
    }

    #[test]
    fn a_permit_of_an_item_round_trips_and_a_bad_item_is_one_damaged_line() {
        let p = PermitInfo { item: b"red-42".to_vec(), ..permit("bob", 8, None) };
        let line = grant(&p);
        assert_eq!(line, "G 8 1000 0 626f62 7265642d3432\n");
        let text = format!("{}{line}G 9 1000 0 616c696365 zz\n", header("z", b"$k"));
        let r = replay(text.as_bytes(), "z", b"$k", 0);
        assert_eq!(r.permits, vec![p]);
    }

    #[test]
    fn a_buyers_permits_for_several_items_all_come_back() {
        let item = |item: &str, seq| PermitInfo {
            item: item.as_bytes().to_vec(),
            ..permit("amy", seq, None)
        };
        let text = format!(
            "{}{}{}{}R 2\n{}",
            header("z", b"$k"),
            grant(&item("x", 1)),
            grant(&item("y", 2)),
            grant(&item("z", 3)),
            grant(&item("y", 4)),
        );
        let r = replay(text.as_bytes(), "z", b"$k", 0);
        assert_eq!(r.permits, vec![item("x", 1), item("z", 3), item("y", 4)]);
    }
}
