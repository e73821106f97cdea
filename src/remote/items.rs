//! The items of a zone kept in Redis, for the admin API: three hashes beside the permits, in
//! the zone's slot (see [`item_keys`]). The scripts that admit keep the counts; this reads
//! them, and sets the stock the API gives an item.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::LazyLock;

use redis::Script;

use super::{Command, Reply, LATE};
use crate::sale::ItemInfo;

/// The zone's item hashes, each keyed by the item: `items` (permits held now, a whole number),
/// `stock` (the stock set through the admin API, a whole number; absent when not set) and
/// `configured` (the cap the configuration gave the last request decided for the item). The
/// braces are the zone's hash tag, as in [`super::keys`].
pub fn item_keys(prefix: &str, zone: &str) -> [String; 3] {
    ["items", "stock", "configured"].map(|part| format!("{prefix}{{{zone}}}:{part}"))
}

/// KEYS: items, stock, configured; ARGV: the deadline, the item, its stock (empty: removes
/// it). Replies the item's {permits, stock, configured}, each nil when absent.
const SET_STOCK: &str = r"
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return {redis.call('HGET', KEYS[1], ARGV[2]), redis.call('HGET', KEYS[2], ARGV[2]),
  redis.call('HGET', KEYS[3], ARGV[2])}
";

static SET_STOCK_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{LATE}{SET_STOCK}")));

/// A whole number as a hash keeps it; `None` when absent or not one.
fn number(value: Option<&str>) -> Option<u64> {
    value?.trim().parse().ok()
}

/// An item from its values in the three hashes (see [`item_keys`]). Redis keeps no item
/// numbers (the listing goes in the order of the items' bytes) and does not count
/// registrations per item: both are 0.
pub fn item_info(
    item: &[u8],
    permits: Option<&str>,
    stock: Option<&str>,
    configured: Option<&str>,
) -> ItemInfo {
    ItemInfo {
        item: item.to_vec(),
        number: 0,
        permits: number(permits).unwrap_or(0),
        registered: 0,
        max_permits: number(stock),
        stock: number(configured),
    }
}

/// Whether the zone has the item, as a zone kept here has it: with a permit, or a stock set
/// through the API (an item only configured, which sold nothing, is not listed).
pub fn is_kept(item: &ItemInfo) -> bool {
    item.permits > 0 || item.max_permits.is_some()
}

/// The zone's items from the three hashes' HGETALLs, in the order of their bytes, up to
/// `limit` after the item `after`.
pub fn page(
    permits: &[(Vec<u8>, String)],
    stock: &[(Vec<u8>, String)],
    configured: &[(Vec<u8>, String)],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<ItemInfo> {
    type Values<'h> = [Option<&'h str>; 3];
    let mut all: BTreeMap<&[u8], Values<'_>> = BTreeMap::new();
    for (at, hash) in [permits, stock, configured].into_iter().enumerate() {
        for (name, value) in hash {
            if at == 2 && !all.contains_key(name.as_slice()) {
                // Only configured: no item of the zone's (see `is_kept`).
                continue;
            }
            all.entry(name.as_slice()).or_default()[at] = Some(value.as_str());
        }
    }
    let after = after.unwrap_or_default();
    all.range::<[u8], _>((Bound::Excluded(after), Bound::Unbounded))
        .map(|(name, [held, set, last])| item_info(name, *held, *set, *last))
        .filter(is_kept)
        .take(limit)
        .collect()
}

/// Runs an item command ([`Command::Items`], [`Command::Item`], [`Command::SetItemStock`]) on
/// the zone's hashes; `deadline` is the round trip's, in Redis's clock (see [`LATE`]).
pub(super) fn execute(
    conn: &mut redis::Connection,
    prefix: &str,
    zone: &str,
    command: &Command,
    deadline: i64,
) -> redis::RedisResult<Reply> {
    let [items, stock, configured] = item_keys(prefix, zone);
    match command {
        Command::Items { after, limit } => {
            // One snapshot of the three hashes (MULTI/EXEC). The page is cut here: an admin's
            // listing, read whole, as many items as a sale has (not per buyer).
            type Hash = Vec<(Vec<u8>, String)>;
            let (held, set, last): (Hash, Hash, Hash) = redis::pipe()
                .atomic()
                .hgetall(&items)
                .hgetall(&stock)
                .hgetall(&configured)
                .query(conn)?;
            Ok(Reply::Items(page(&held, &set, &last, after.as_deref(), *limit)))
        }
        Command::Item { item } => {
            let (held, set, last): (Option<String>, Option<String>, Option<String>) = redis::pipe()
                .atomic()
                .hget(&items, item.as_slice())
                .hget(&stock, item.as_slice())
                .hget(&configured, item.as_slice())
                .query(conn)?;
            let found = item_info(item, held.as_deref(), set.as_deref(), last.as_deref());
            Ok(Reply::Item(is_kept(&found).then_some(found)))
        }
        Command::SetItemStock { item, max_permits } => {
            let (held, set, last): (Option<String>, Option<String>, Option<String>) =
                SET_STOCK_SCRIPT
                    .key(&items)
                    .key(&stock)
                    .key(&configured)
                    .arg(deadline)
                    .arg(item.as_slice())
                    .arg(max_permits.map_or(String::new(), |n| n.to_string()))
                    .invoke(conn)?;
            let now = item_info(item, held.as_deref(), set.as_deref(), last.as_deref());
            Ok(Reply::Item(Some(now)))
        }
        _ => Err(redis::RedisError::from((redis::ErrorKind::ClientError, "not an item command"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, String)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), (*v).to_string())).collect()
    }

    #[test]
    fn keys_share_the_zones_slot() {
        assert_eq!(
            item_keys("shop:", "drop"),
            ["shop:{drop}:items", "shop:{drop}:stock", "shop:{drop}:configured"]
        );
    }

    #[test]
    fn items_are_merged_and_paged_by_their_bytes() {
        let permits = hash(&[("red-42", "2"), ("blue-43", "1"), ("gone", "0")]);
        let stock = hash(&[("red-42", "5"), ("white-1", "3")]);
        let configured = hash(&[("red-42", "2"), ("blue-43", "1"), ("gone", "4"), ("x", "1")]);
        let all = page(&permits, &stock, &configured, None, 10);
        let names: Vec<&[u8]> = all.iter().map(|i| i.item.as_slice()).collect();
        // "gone" sold nothing and has no stock; "x" was only configured: neither is listed.
        assert_eq!(names, [&b"blue-43"[..], b"red-42", b"white-1"]);
        assert_eq!(
            all[1],
            ItemInfo {
                item: b"red-42".to_vec(),
                number: 0,
                permits: 2,
                registered: 0,
                max_permits: Some(5),
                stock: Some(2)
            }
        );
        assert_eq!((all[1].cap(None), all[1].left(None)), (Some(5), Some(3)));
        assert_eq!((all[2].permits, all[2].stock, all[2].cap(None)), (0, None, Some(3)));
        let first = page(&permits, &stock, &configured, None, 2);
        assert_eq!(first.len(), 2);
        let rest = page(&permits, &stock, &configured, Some(&first[1].item), 2);
        assert_eq!(rest.iter().map(|i| i.item.as_slice()).collect::<Vec<_>>(), [b"white-1"]);
        // A cursor whose item is gone leads on from its place.
        let after_gone = page(&permits, &stock, &configured, Some(b"c"), 10);
        assert_eq!(after_gone[0].item, b"red-42");
    }

    #[test]
    fn a_value_that_is_not_a_number_is_no_value() {
        let item = item_info(b"a", Some("x"), Some(""), Some("-1"));
        assert_eq!((item.permits, item.max_permits, item.stock), (0, None, None));
        assert!(!is_kept(&item));
        assert!(is_kept(&item_info(b"a", None, Some("0"), None)), "a stock of 0 is a stock");
    }
}
