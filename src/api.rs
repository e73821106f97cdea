//! The admin API's requests and answers, in plain Rust: routes, query strings, JSON bodies.
//! The glue (`endpoints.rs`) reads the request, calls the zone, and sends what this builds.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};
use serde_json::{json, Map, Value};

use crate::line::Rate;
use crate::parse;
use crate::remote::Reply;
use crate::sale::{Cap, Grant, ItemInfo, Overrides, OverridesPatch, PermitInfo};
use crate::zone::Cursor;

/// What a path under the API's location names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Zones,
    Zone(String),
    Permits(String),
    /// A buyer's permit: the zone, the buyer's key, and the item (`?item=`; empty for the
    /// zone's single item).
    Permit(String, Vec<u8>, Vec<u8>),
    /// The items of a zone that sells several (`flash_sale_item`).
    Items(String),
    /// One item of a zone: the zone and the item (1 to 256 bytes).
    Item(String, Vec<u8>),
}

/// An answer that is not a success: the status and the reason, sent as `{"error": reason}`.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        ApiError { status, reason: reason.into() }
    }

    pub fn body(&self) -> String {
        json!({ "error": self.reason }).to_string()
    }
}

/// The most permits one page lists, and the default.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

/// Routes a raw (still percent-encoded) path relative to the API's location, with its query
/// string; `reading` for GET and HEAD. A permit's key is percent-encoded in the path, or, with
/// `?encoding=base64`, the key's `key_base64` (any bytes, a zero byte too, which nginx refuses
/// in a path as `%00`). A query parameter the request does not take is refused (400), so that
/// a mistyped or misplaced one never widens what it does: `DELETE zones/NAME/permits?limit=1`
/// revokes nothing, nor does `DELETE zones/NAME/permits/` (an empty key).
pub fn route(path: &[u8], args: &[u8], reading: bool) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(404, "no such endpoint; try GET zones");
    let path = path.strip_prefix(b"/").unwrap_or(path);
    let parts: Vec<&[u8]> = path.split(|&c| c == b'/').collect();
    let name = |raw: &[u8]| -> Result<String, ApiError> {
        let decoded =
            percent_decode(raw).ok_or_else(|| ApiError::new(400, "bad percent-encoding"))?;
        String::from_utf8(decoded).map_err(|_| ApiError::new(400, "zone names are UTF-8"))
    };
    let (route, takes): (Route, &[&[u8]]) = match parts.as_slice() {
        [b"zones"] | [b"zones", b""] => (Route::Zones, &[]),
        [b"zones", zone] if !zone.is_empty() => (Route::Zone(name(zone)?), &[]),
        [b"zones", zone, b"permits"] if !zone.is_empty() => {
            let takes: &[&[u8]] = if reading { &[b"limit", b"after"] } else { &[] };
            (Route::Permits(name(zone)?), takes)
        }
        [b"zones", _, b"permits", b""] => {
            return Err(ApiError::new(400, "no key after permits/: a key is 1 to 1024 bytes"));
        }
        [b"zones", zone, b"permits", key] if !zone.is_empty() => {
            let base64 = match query(args).find(|(name, _)| *name == b"encoding") {
                None => false,
                Some((_, b"base64")) => true,
                Some(_) => return Err(ApiError::new(400, "bad encoding: expected base64")),
            };
            let key = if base64 {
                key_from_base64(key).ok_or_else(|| ApiError::new(400, "bad base64 key"))?
            } else {
                percent_decode(key).ok_or_else(|| ApiError::new(400, "bad percent-encoding"))?
            };
            (Route::Permit(name(zone)?, key, permit_item(args)?), &[b"encoding", b"item"])
        }
        [b"zones", zone, b"items"] if !zone.is_empty() => {
            let takes: &[&[u8]] = if reading { &[b"limit", b"after"] } else { &[] };
            (Route::Items(name(zone)?), takes)
        }
        [b"zones", _, b"items", b""] => {
            return Err(ApiError::new(400, format!("no item after items/: {ITEM_RULE}")));
        }
        [b"zones", zone, b"items", item] if !zone.is_empty() => {
            let item =
                percent_decode(item).ok_or_else(|| ApiError::new(400, "bad percent-encoding"))?;
            if !valid_item(&item) {
                return Err(ApiError::new(400, ITEM_RULE));
            }
            (Route::Item(name(zone)?, item), &[])
        }
        _ => return Err(not_found()),
    };
    if let Some((unknown, _)) = query(args).find(|(name, _)| !takes.contains(name)) {
        let unknown = String::from_utf8_lossy(unknown);
        return Err(ApiError::new(400, format!("unknown parameter \"{unknown}\" here")));
    }
    Ok(route)
}

/// The item a permit route names with `?item=` (percent-encoded, given once); empty without
/// one: the zone's single item.
fn permit_item(args: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut given = query(args).filter(|(name, _)| *name == b"item");
    let Some((_, raw)) = given.next() else {
        return Ok(Vec::new());
    };
    if given.next().is_some() {
        return Err(ApiError::new(400, "give item once"));
    }
    let item = percent_decode(raw).ok_or_else(|| ApiError::new(400, "bad percent-encoding"))?;
    if !valid_item(&item) {
        return Err(ApiError::new(400, format!("bad item: {ITEM_RULE}")));
    }
    Ok(item)
}

/// The `name=value` pairs of a query string, still percent-encoded.
fn query(args: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    args.split(|&c| c == b'&').filter(|p| !p.is_empty()).map(|pair| {
        match pair.iter().position(|&c| c == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        }
    })
}

/// Keys in JSON and cursors: base64url without padding (RFC 4648, section 5), which needs no
/// escaping in a path or a query string; padding is accepted when a client adds it.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A key as `key_base64` shows it; lossless for any bytes.
pub fn key_base64(key: &[u8]) -> String {
    KEY_BASE64.encode(key)
}

/// The key a `key_base64` (or a listing's `next`) stands for; `None` if it is not base64url.
pub fn key_from_base64(text: &[u8]) -> Option<Vec<u8>> {
    KEY_BASE64.decode(text).ok()
}

/// The request headers that tell where a request comes from, as the client sent them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sender<'a> {
    pub host: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    pub fetch_site: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
}

/// Whether a request that changes something may be served: the defence against other sites'
/// pages (cross-site request forgery). A browser lets any page send a POST whose body is
/// `text/plain` or a form to any address, without asking the server first; so a body
/// (`with_body`: POST, PATCH) must be `Content-Type: application/json`, which another site's
/// page can only send after a CORS preflight that this API never grants; and a request that
/// the browser says comes from another site is refused: an `Origin` other than the `Host`
/// (or `null`), or `Sec-Fetch-Site` other than `same-origin` or `none` (see the Fetch
/// Metadata and Origin headers in the Fetch standard). `curl` and scripts send neither header.
///
/// Errors: 403 for another site, 415 for a body that is not JSON.
pub fn check_sender(sender: &Sender<'_>, with_body: bool) -> Result<(), ApiError> {
    let refused = |why: String| ApiError::new(403, format!("refused: {why}"));
    if let Some(site) = sender.fetch_site {
        if !site.eq_ignore_ascii_case(b"same-origin") && !site.eq_ignore_ascii_case(b"none") {
            let site = String::from_utf8_lossy(site);
            return Err(refused(format!("Sec-Fetch-Site is \"{site}\", not same-origin")));
        }
    }
    if let Some(origin) = sender.origin {
        let authority = origin
            .strip_prefix(b"http://")
            .or_else(|| origin.strip_prefix(b"https://"))
            .unwrap_or(origin);
        if !sender.host.is_some_and(|host| host.eq_ignore_ascii_case(authority)) {
            let origin = String::from_utf8_lossy(origin);
            return Err(refused(format!("a request from another site (Origin \"{origin}\")")));
        }
    }
    if with_body {
        let media_type = sender
            .content_type
            .and_then(|value| value.split(|&c| c == b';').next())
            .map(<[u8]>::trim_ascii)
            .unwrap_or_default();
        if !media_type.eq_ignore_ascii_case(b"application/json") {
            return Err(ApiError::new(415, "send the body as Content-Type: application/json"));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes; `None` for a malformed one.
pub fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&c) = bytes.next() {
        if c == b'%' {
            let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            let (high, low) = (digit(*bytes.next()?)?, digit(*bytes.next()?)?);
            out.push(high << 4 | low);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// `?limit=N&after=CURSOR` of a permit listing; the cursor is the `next` of the page before.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub after: Option<Cursor>,
}

/// A page's `limit`: 1 to [`MAX_PAGE`].
fn limit(value: &[u8]) -> Result<usize, ApiError> {
    let bad = || ApiError::new(400, "bad limit: a number from 1 to 1000");
    let text = core::str::from_utf8(value).map_err(|_| bad())?;
    Ok(parse::cap(text).filter(|&n| (1..=MAX_PAGE as u64).contains(&n)).ok_or_else(bad)? as usize)
}

pub fn page(args: &[u8]) -> Result<Page, ApiError> {
    let mut page = Page { limit: DEFAULT_PAGE, after: None };
    for (name, value) in query(args) {
        let bad = |what: &str| ApiError::new(400, format!("bad {what}"));
        match name {
            b"limit" => page.limit = limit(value)?,
            b"after" => {
                let cursor = cursor_from(value)
                    .ok_or_else(|| bad("after: expected the \"next\" of the page before"))?;
                page.after = Some(cursor);
            }
            _ => {}
        }
    }
    Ok(page)
}

/// `?limit=N&after=CURSOR` of an item listing. The cursor is opaque to the client (the `next`
/// of the page before, base64url); here, its bytes: the item's number (8 bytes, big-endian)
/// for a zone kept here, the item itself for a zone kept in Redis.
#[derive(Debug, PartialEq, Eq)]
pub struct ItemPage {
    pub limit: usize,
    pub after: Option<Vec<u8>>,
}

pub fn item_page(args: &[u8]) -> Result<ItemPage, ApiError> {
    let mut page = ItemPage { limit: DEFAULT_PAGE, after: None };
    for (name, value) in query(args) {
        match name {
            b"limit" => page.limit = limit(value)?,
            b"after" => {
                let after = key_from_base64(value).filter(|a| !a.is_empty()).ok_or_else(|| {
                    ApiError::new(400, "bad after: expected the \"next\" of the page before")
                })?;
                page.after = Some(after);
            }
            _ => {}
        }
    }
    Ok(page)
}

impl ItemPage {
    /// The item number a zone kept here lists after: 0 for the first page.
    pub fn after_number(&self) -> Result<u64, ApiError> {
        let Some(after) = &self.after else {
            return Ok(0);
        };
        let bytes = <[u8; 8]>::try_from(after.as_slice()).map_err(|_| {
            ApiError::new(400, "bad after: expected the \"next\" of the page before")
        })?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// An item's text in JSON: the item's bytes as UTF-8 (an item that is not UTF-8, which only a
/// percent-encoded path reaches, shows with U+FFFD in their place).
fn item_text(item: &[u8]) -> String {
    String::from_utf8_lossy(item).into_owned()
}

/// An item as JSON: `item`; `permits` held now; `max_permits`, the stock the API set (null
/// when not); `stock`, the cap the configuration gave the last request decided for it (null
/// for none); `cap`, the one in force (the API's, else the configuration's; null: none);
/// `left` under it (null without one); `registered` for the pre-queue's draw (null for a zone
/// kept in Redis, which does not count them per item: `counts_registered` false).
pub fn item_json(i: &ItemInfo, counts_registered: bool, zone_cap: Cap) -> Value {
    let mut fields = json!({
        "item": item_text(&i.item),
        "permits": i.permits,
        "max_permits": i.max_permits,
        "stock": i.stock,
        "cap": i.cap(zone_cap),
        "left": i.left(zone_cap),
        "registered": counts_registered.then_some(i.registered),
    });
    add_item_base64(&mut fields, &i.item);
    fields
}

/// An item that is not UTF-8 is shown lossily in `item`; `item_base64` (base64url, no
/// padding, as `key_base64`) says which bytes it is, so that two such items are told apart.
fn add_item_base64(fields: &mut Value, item: &[u8]) {
    if let (Err(_), Value::Object(map)) = (core::str::from_utf8(item), fields) {
        map.insert("item_base64".into(), json!(key_base64(item)));
    }
}

/// A page of items and `next`, the cursor of the next page (null when the page came back
/// short). Items of a zone kept here lead on from their number, those of a zone kept in
/// Redis (`remote`) from the item itself (see [`ItemPage`]).
pub fn items_page_json(items: &[ItemInfo], limit: usize, remote: bool, zone_cap: Cap) -> Value {
    let next = (items.len() == limit).then(|| {
        items.last().map(|i| match remote {
            true => key_base64(&i.item),
            false => key_base64(&i.number.to_be_bytes()),
        })
    });
    let shown: Vec<Value> = items.iter().map(|i| item_json(i, !remote, zone_cap)).collect();
    json!({ "items": shown, "next": next.flatten() })
}

/// The largest stock `PATCH zones/NAME/items/ITEM` takes: 2^53 - 1, the largest whole number
/// every JSON reader and Redis's Lua (doubles) hold exactly.
pub const MAX_ITEM_STOCK: u64 = (1 << 53) - 1;

/// Reads the body of `PATCH zones/NAME/items/ITEM`: `{"max_permits": N}` (a whole number of
/// permits, 0 to [`MAX_ITEM_STOCK`]) or `{"max_permits": null}` (back to the configuration's).
/// Returns the stock to set, `None` to remove it.
pub fn item_patch(body: &[u8]) -> Result<Option<u64>, ApiError> {
    let Value::Object(fields) = parse_json(body)? else {
        return Err(ApiError::new(400, "expected a JSON object"));
    };
    if let Some(unknown) = fields.keys().find(|name| *name != "max_permits") {
        return Err(ApiError::new(400, format!("unknown field \"{unknown}\"")));
    }
    match fields.get("max_permits") {
        None => Err(ApiError::new(400, "nothing to change: give max_permits")),
        Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().filter(|&n| n <= MAX_ITEM_STOCK).map(Some).ok_or_else(|| {
            ApiError::new(
                400,
                "max_permits: expected a whole number from 0 to 9007199254740991 or null",
            )
        }),
    }
}

/// A listing's `next`: the place of the page's last permit (its expiry, its number and its
/// key), in base64url, opaque to the client. A place, not a key, so that the cursor leads on
/// even when that permit is revoked, expires or is granted anew meanwhile.
pub fn cursor(c: &Cursor) -> String {
    let mut bytes = Vec::with_capacity(16 + c.key.len());
    bytes.extend_from_slice(&c.expires_ms.unwrap_or(i64::MIN).to_be_bytes());
    bytes.extend_from_slice(&c.seq.to_be_bytes());
    bytes.extend_from_slice(&c.key);
    KEY_BASE64.encode(bytes)
}

/// The place a `next` stands for; `None` if it is not one.
pub fn cursor_from(text: &[u8]) -> Option<Cursor> {
    let bytes = KEY_BASE64.decode(text).ok()?;
    let (expires, rest) = bytes.split_first_chunk::<8>()?;
    let (seq, key) = rest.split_first_chunk::<8>()?;
    let expires = i64::from_be_bytes(*expires);
    Some(Cursor {
        expires_ms: (expires != i64::MIN).then_some(expires),
        seq: u64::from_be_bytes(*seq),
        key: key.to_vec(),
    })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("malformed JSON: {e}")))
}

/// A time-to-live in a grant: seconds as a number, or a string such as "10m".
fn ttl(value: &Value) -> Result<Option<i64>, ApiError> {
    let bad = || ApiError::new(400, "ttl is a number of seconds or a time such as \"10m\"");
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let seconds = n.as_u64().filter(|&s| s > 0 && s < 1 << 40).ok_or_else(bad)?;
            Ok(Some(seconds as i64 * 1000))
        }
        Value::String(s) => parse::duration_ms(s).map(Some).ok_or_else(|| {
            ApiError::new(
                400,
                format!(
                    "invalid ttl \"{s}\": expected seconds, or a time such as \"10m\" or \"1h30m\""
                ),
            )
        }),
        _ => Err(bad()),
    }
}

/// What an item is: 1 to [`crate::sale::MAX_ITEM_LEN`] bytes.
pub const ITEM_RULE: &str = "an item is a string of 1 to 256 bytes";

/// Whether `item` is one a request could name.
pub fn valid_item(item: &[u8]) -> bool {
    !item.is_empty() && item.len() <= crate::sale::MAX_ITEM_LEN
}

/// The body of `POST zones/NAME/permits`: `["key", ...]` or
/// `[{"key": "...", "item": "red-42", "ttl": "10m"}]`; `{"key_base64": "..."}` names a key
/// that is not text.
pub fn grants(body: &[u8]) -> Result<Vec<Grant>, ApiError> {
    let Value::Array(items) = parse_json(body)? else {
        return Err(ApiError::new(400, "expected a JSON array of keys"));
    };
    if items.is_empty() {
        return Err(ApiError::new(400, "no keys to grant"));
    }
    let key = |k: &[u8]| -> Result<Vec<u8>, ApiError> {
        if k.is_empty() || k.len() > crate::sale::MAX_KEY_LEN {
            return Err(ApiError::new(400, "a key is 1 to 1024 bytes"));
        }
        Ok(k.to_vec())
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(k) => Ok((key(k.as_bytes())?, Vec::new(), None)),
            Value::Object(o) => {
                let known = ["key", "key_base64", "item", "ttl"];
                if let Some(unknown) = o.keys().find(|k| !known.contains(&k.as_str())) {
                    return Err(ApiError::new(400, format!("unknown field \"{unknown}\"")));
                }
                let ttl = ttl(o.get("ttl").unwrap_or(&Value::Null))?;
                let item = match o.get("item") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::String(i)) if valid_item(i.as_bytes()) => i.as_bytes().to_vec(),
                    Some(_) => return Err(ApiError::new(400, ITEM_RULE)),
                };
                match (o.get("key"), o.get("key_base64")) {
                    (Some(Value::String(k)), None) => Ok((key(k.as_bytes())?, item, ttl)),
                    (None, Some(Value::String(k))) => {
                        let bytes = key_from_base64(k.as_bytes())
                            .ok_or_else(|| ApiError::new(400, "bad key_base64"))?;
                        Ok((key(&bytes)?, item, ttl))
                    }
                    (Some(_), Some(_)) => {
                        Err(ApiError::new(400, "give a \"key\" or a \"key_base64\", not both"))
                    }
                    _ => Err(ApiError::new(
                        400,
                        "each object needs a \"key\" or a \"key_base64\" string",
                    )),
                }
            }
            _ => Err(ApiError::new(400, "each item is a key or an object with a key")),
        })
        .collect()
}

/// Reads the body of `PATCH zones/NAME`, a JSON object of any of block_ratio (a number from 0
/// to 1), max_permits (a whole number), start and end (RFC 3339 times); null clears a field.
pub fn patch(body: &[u8]) -> Result<OverridesPatch, ApiError> {
    let Value::Object(fields) = parse_json(body)? else {
        return Err(ApiError::new(400, "expected a JSON object"));
    };
    let mut patch = OverridesPatch::default();
    for (name, value) in &fields {
        let bad = |what: &str| ApiError::new(400, format!("{name}: expected {what} or null"));
        match name.as_str() {
            "block_ratio" => {
                patch.block_ratio = Some(match value {
                    Value::Null => None,
                    v => Some(
                        v.as_f64()
                            .and_then(crate::sale::BlockRatio::new)
                            .ok_or_else(|| bad("a number from 0 to 1"))?
                            .value(),
                    ),
                })
            }
            "max_permits" => {
                patch.max_permits = Some(match value {
                    Value::Null => None,
                    v => Some(v.as_u64().ok_or_else(|| bad("a whole number"))?),
                })
            }
            "start" | "end" => {
                let time = match value {
                    Value::Null => None,
                    Value::String(s) => {
                        Some(parse::rfc3339_ms(s).ok_or_else(|| bad("an RFC 3339 time"))?)
                    }
                    _ => return Err(bad("an RFC 3339 time")),
                };
                if name == "start" {
                    patch.start_ms = Some(time);
                } else {
                    patch.end_ms = Some(time);
                }
            }
            "queue_rate" => {
                let rate = "a rate such as \"20r/s\" or \"600r/m\"";
                patch.queue_rate = Some(match value {
                    Value::Null => None,
                    Value::String(s) => Some(parse::rate(s).ok_or_else(|| bad(rate))?.milli()),
                    _ => return Err(bad(rate)),
                })
            }
            other => return Err(ApiError::new(400, format!("unknown field \"{other}\""))),
        }
    }
    if fields.is_empty() {
        return Err(ApiError::new(400, "nothing to change"));
    }
    Ok(patch)
}

/// The overrides `now` with `patch`'s changes made, unless they leave the sale no time: an
/// end that is not after the start.
pub fn patched(now: &Overrides, patch: &OverridesPatch) -> Result<Overrides, ApiError> {
    let next = now.patched(patch);
    if next.window().is_empty() {
        return Err(ApiError::new(400, "end must be after start"));
    }
    Ok(next)
}

/// A zone's overrides as the API shows them: `{"block_ratio", "max_permits", "start", "end",
/// "queue_rate"}`, the times in RFC 3339, the rate as `limit_req` writes it (`20r/s`), null for
/// a field not overridden.
pub fn overrides_json(overrides: &Overrides) -> Value {
    json!({
        "block_ratio": overrides.block_ratio,
        "max_permits": overrides.max_permits,
        "start": overrides.start_ms.map(rfc3339),
        "end": overrides.end_ms.map(rfc3339),
        "queue_rate": overrides.queue_rate.and_then(Rate::from_milli).map(Rate::to_text),
    })
}

/// What a zone's keys are, for showing them: bytes, or addresses when the key is
/// `$binary_remote_addr` (4 bytes for IPv4, 16 for IPv6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    #[default]
    Bytes,
    Address,
}

impl KeyKind {
    /// The kind of the keys of a zone whose key expression is `expression`.
    pub fn of(expression: &[u8]) -> KeyKind {
        if expression == b"$binary_remote_addr" {
            KeyKind::Address
        } else {
            KeyKind::Bytes
        }
    }
}

/// A key's fields in JSON: `key`, the key as text when it is UTF-8 (else null);
/// `key_base64`, always, lossless; and for an address key, `address` as text.
fn key_fields(key: &[u8], kind: KeyKind) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("key".into(), json!(core::str::from_utf8(key).ok()));
    fields.insert("key_base64".into(), json!(key_base64(key)));
    if kind == KeyKind::Address {
        let address = match *key {
            [a, b, c, d] => Some(std::net::Ipv4Addr::new(a, b, c, d).to_string()),
            _ => <[u8; 16]>::try_from(key).ok().map(|v6| std::net::Ipv6Addr::from(v6).to_string()),
        };
        fields.insert("address".into(), json!(address));
    }
    fields
}

/// A permit's `item`: the item as text, null in a zone that sells one item.
fn permit_item_json(item: &[u8]) -> Value {
    json!((!item.is_empty()).then(|| item_text(item)))
}

/// A permit as JSON: its key's fields, `item` (null in a zone that sells one), `seq`,
/// `granted` and `expires` (RFC 3339, or null).
pub fn permit_json(p: &PermitInfo, kind: KeyKind) -> Value {
    let mut fields = key_fields(&p.key, kind);
    fields.insert("item".into(), permit_item_json(&p.item));
    fields.insert("seq".into(), json!(p.seq));
    fields.insert("granted".into(), json!(rfc3339(p.granted_ms)));
    fields.insert("expires".into(), json!(p.expires_ms.map(rfc3339)));
    let mut fields = Value::Object(fields);
    add_item_base64(&mut fields, &p.item);
    fields
}

/// What an API request on a zone kept in Redis asked, besides the zone: the permit's key, the
/// page of a listing, the cap a grant is compared with.
#[derive(Debug, Default)]
pub struct RemoteAsk {
    pub key: Vec<u8>,
    /// The permit's item (empty for the zone's single item).
    pub item: Vec<u8>,
    pub kind: KeyKind,
    pub page: Option<Page>,
    /// The page of an item listing.
    pub item_page: Option<ItemPage>,
    pub cap: Option<u64>,
}

/// The answer to an API request on a zone kept in Redis, from Redis's reply; the same JSON as
/// for a zone kept here.
pub fn remote_answer(ask: &RemoteAsk, reply: Reply) -> Result<(u16, Value), ApiError> {
    let no_permit = || ApiError::new(404, "no permit for this key");
    match reply {
        Reply::Permit(held) => {
            let held = held.ok_or_else(no_permit)?;
            let mut fields = key_fields(&ask.key, ask.kind);
            fields.insert("item".into(), permit_item_json(&ask.item));
            fields.insert("seq".into(), json!(held.seq));
            fields.insert("expires".into(), json!(held.expires_ms.map(rfc3339)));
            Ok((200, Value::Object(fields)))
        }
        Reply::Revoked(seq) => seq.map(|_| (200, json!({ "revoked": 1 }))).ok_or_else(no_permit),
        Reply::Cleared(revoked) => Ok((200, json!({ "revoked": revoked }))),
        Reply::Permits(permits) => {
            let page = ask.page.as_ref().ok_or_else(|| ApiError::new(500, "no page asked"))?;
            // Redis lists in the order of the numbers: a place is a number there.
            let start = page.after.as_ref().map_or(0, |after| {
                permits.iter().position(|p| p.seq > after.seq).unwrap_or(permits.len())
            });
            let end = permits.len().min(start.saturating_add(page.limit));
            Ok((200, page_json(&permits[start..end], page.limit, ask.kind)))
        }
        Reply::Granted { granted, already, permits } => Ok((
            200,
            json!({
                "granted": granted,
                "already": already,
                "zone_full": 0,
                "permits": permits,
                "over_cap": ask.cap.is_some_and(|cap| permits > cap),
            }),
        )),
        Reply::Items(items) => {
            let page = ask.item_page.as_ref().ok_or_else(|| ApiError::new(500, "no page asked"))?;
            Ok((200, items_page_json(&items, page.limit, true, ask.cap)))
        }
        Reply::Item(item) => {
            let item = item.ok_or_else(|| ApiError::new(404, "no such item in this zone"))?;
            Ok((200, item_json(&item, false, ask.cap)))
        }
        Reply::Admission(_)
        | Reply::DrawSecret(_)
        | Reply::Overrides(_)
        | Reply::Lined(_)
        | Reply::Registered(_)
        | Reply::Opened(_)
        | Reply::Line(..) => Err(ApiError::new(500, "unexpected reply from Redis")),
    }
}

/// A page of permits and `next`, the cursor of the next page (null on the last one).
pub fn page_json(permits: &[PermitInfo], limit: usize, kind: KeyKind) -> Value {
    let next = (permits.len() == limit).then(|| permits.last().map(|p| cursor(&Cursor::of(p))));
    let permits: Vec<Value> = permits.iter().map(|p| permit_json(p, kind)).collect();
    json!({ "permits": permits, "next": next.flatten() })
}

/// Unix milliseconds as RFC 3339 in UTC, with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = parse::civil_from_days(days);
    let (h, min, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let route = |path: &[u8]| route(path, b"", true);
        assert_eq!(route(b"zones"), Ok(Route::Zones));
        assert_eq!(route(b"/zones/"), Ok(Route::Zones));
        assert_eq!(route(b"zones/laptop"), Ok(Route::Zone("laptop".into())));
        assert_eq!(route(b"zones/laptop/permits"), Ok(Route::Permits("laptop".into())));
        assert_eq!(
            route(b"zones/laptop/permits/Bearer%20a%2Fb"),
            Ok(Route::Permit("laptop".into(), b"Bearer a/b".to_vec(), vec![]))
        );
        assert_eq!(
            route(b"zones/laptop/permits/%ff").unwrap(),
            Route::Permit("laptop".into(), vec![0xff], vec![])
        );
        for bad in
            [&b""[..], b"zone", b"zones/laptop/other", b"zones//permits", b"zones/a/permits/k/x"]
        {
            assert_eq!(route(bad).unwrap_err().status, 404, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(route(b"zones/laptop/permits/%zz").unwrap_err().status, 400);
        assert_eq!(route(b"zones/laptop/permits/%4").unwrap_err().status, 400);
        assert_eq!(route(b"zones/laptop/permits/%+f").unwrap_err().status, 400, "not hex");
        // An empty key is no key: `DELETE permits/$KEY` with an empty $KEY revokes nothing.
        assert_eq!(route(b"zones/laptop/permits/").unwrap_err().status, 400);
    }

    #[test]
    fn any_key_has_an_address() {
        // 127.0.0.200 as $binary_remote_addr: zero bytes, and not UTF-8.
        let key = [127, 0, 0, 200];
        let address = format!("zones/ip/permits/{}", key_base64(&key));
        for reading in [true, false] {
            assert_eq!(
                route(address.as_bytes(), b"encoding=base64", reading),
                Ok(Route::Permit("ip".into(), key.to_vec(), vec![]))
            );
        }
        assert_eq!(
            route(b"zones/ip/permits/fwAAyA==", b"encoding=base64", true),
            Ok(Route::Permit("ip".into(), key.to_vec(), vec![]))
        );
        for (path, args, reading) in [
            (&b"zones/ip/permits/fwAAyA"[..], &b"encoding=hex"[..], true),
            (b"zones/ip/permits/f*AAyA", b"encoding=base64", true),
            (b"zones/ip/permits/fwAAyA", b"encodng=base64", false),
            (b"zones/ip/permits", b"encoding=base64", false),
            // A page's parameters do not narrow a DELETE of every permit: refused.
            (b"zones/ip/permits", b"limit=1", false),
            (b"zones/ip/permits", b"after=fwAAyA", false),
            (b"zones/ip", b"limit=1", true),
            (b"zones", b"x", true),
        ] {
            let refused = route(path, args, reading).unwrap_err();
            assert_eq!(refused.status, 400, "{:?} {:?}", path, args);
        }
        assert_eq!(
            route(b"zones/ip/permits", b"limit=5&after=fwAAyA", true),
            Ok(Route::Permits("ip".into()))
        );
    }

    #[test]
    fn keys_round_trip_through_json_and_cursors() {
        for key in [&b"bob"[..], b"\xff1", b"\0", &[127, 0, 0, 200], "caf\u{e9}".as_bytes()] {
            let p = PermitInfo {
                item: Vec::new(),
                key: key.to_vec(),
                seq: 1,
                granted_ms: 0,
                expires_ms: None,
            };
            let json = permit_json(&p, KeyKind::Bytes);
            let b64 = json["key_base64"].as_str().unwrap();
            assert_eq!(key_from_base64(b64.as_bytes()).as_deref(), Some(key));
            assert_eq!(json["key"], json!(core::str::from_utf8(key).ok()));
            let next = page_json(std::slice::from_ref(&p), 1, KeyKind::Bytes)["next"]
                .as_str()
                .unwrap()
                .to_owned();
            let after = page(format!("after={next}").as_bytes()).unwrap().after;
            assert_eq!(after, Some(Cursor::of(&p)));
        }
        // Two addresses that the old lossy text showed alike are told apart.
        let a = permit_json(
            &PermitInfo {
                item: Vec::new(),
                key: vec![127, 0, 0, 200],
                seq: 1,
                granted_ms: 0,
                expires_ms: None,
            },
            KeyKind::Address,
        );
        let b = permit_json(
            &PermitInfo {
                item: Vec::new(),
                key: vec![127, 0, 0, 201],
                seq: 2,
                granted_ms: 0,
                expires_ms: None,
            },
            KeyKind::Address,
        );
        assert_eq!(
            (a["address"].as_str(), b["address"].as_str()),
            (Some("127.0.0.200"), Some("127.0.0.201"))
        );
        assert_ne!(a["key_base64"], b["key_base64"]);
        let v6 = permit_json(
            &PermitInfo {
                item: Vec::new(),
                key: vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                seq: 3,
                granted_ms: 0,
                expires_ms: None,
            },
            KeyKind::Address,
        );
        assert_eq!(v6["address"], "2001:db8::1");
        assert_eq!(KeyKind::of(b"$binary_remote_addr"), KeyKind::Address);
        assert_eq!(KeyKind::of(b"$remote_addr"), KeyKind::Bytes);
    }

    #[test]
    fn other_sites_pages_cannot_change_anything() {
        let json = Some(&b"application/json"[..]);
        let curl =
            Sender { host: Some(b"127.0.0.1:8080"), content_type: json, ..Sender::default() };
        assert_eq!(check_sender(&curl, true), Ok(()));
        assert_eq!(check_sender(&Sender { content_type: None, ..curl }, false), Ok(()));
        for content_type in [&b"application/json; charset=utf-8"[..], b"Application/JSON"] {
            let sender = Sender { content_type: Some(content_type), ..curl };
            assert_eq!(check_sender(&sender, true), Ok(()));
        }
        let same_page = Sender {
            origin: Some(b"http://127.0.0.1:8080"),
            fetch_site: Some(b"same-origin"),
            ..curl
        };
        assert_eq!(check_sender(&same_page, true), Ok(()));
        // What a form on another site can send without a preflight.
        for content_type in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"text/plain; a=application/json",
        ] {
            let form = Sender { content_type: Some(content_type), ..curl };
            assert_eq!(check_sender(&form, true).unwrap_err().status, 415);
        }
        assert_eq!(
            check_sender(&Sender { content_type: None, ..curl }, true).unwrap_err().status,
            415
        );
        for (origin, site) in [
            (Some(&b"http://evil.example"[..]), None),
            (Some(b"null"), None),
            (Some(b"http://127.0.0.1:8081"), None),
            (None, Some(&b"cross-site"[..])),
            (None, Some(b"same-site")),
            (Some(b"http://127.0.0.1:8080"), Some(b"cross-site")),
        ] {
            let sender = Sender { origin, fetch_site: site, ..curl };
            assert_eq!(
                check_sender(&sender, false).unwrap_err().status,
                403,
                "{origin:?} {site:?}"
            );
            assert_eq!(check_sender(&sender, true).unwrap_err().status, 403);
        }
        let no_host = Sender { host: None, origin: Some(b"http://127.0.0.1:8080"), ..curl };
        assert_eq!(check_sender(&no_host, false).unwrap_err().status, 403);
    }

    #[test]
    fn pages() {
        assert_eq!(page(b""), Ok(Page { limit: 100, after: None }));
        let place = Cursor { expires_ms: Some(1_500), seq: 7, key: b"a b".to_vec() };
        let args = format!("limit=2&after={}", cursor(&place));
        assert_eq!(page(args.as_bytes()), Ok(Page { limit: 2, after: Some(place) }));
        let never = Cursor { expires_ms: None, seq: 8, key: Vec::new() };
        assert_eq!(cursor_from(cursor(&never).as_bytes()), Some(never));
        assert_eq!(cursor_from(b"YSBi"), None, "too short for a place");
        for bad in
            [&b"limit=0"[..], b"limit=1001", b"limit=-1", b"limit=x", b"after=%z", b"after=a b"]
        {
            assert_eq!(page(bad).unwrap_err().status, 400);
        }
    }

    #[test]
    fn grant_bodies() {
        assert_eq!(
            grants(br#"["a", "b"]"#).unwrap(),
            vec![(b"a".to_vec(), vec![], None), (b"b".to_vec(), vec![], None)]
        );
        assert_eq!(
            grants(br#"[{"key": "a", "ttl": "10m"}, {"key": "b", "ttl": 30}, {"key": "c"}]"#)
                .unwrap(),
            vec![
                (b"a".to_vec(), vec![], Some(600_000)),
                (b"b".to_vec(), vec![], Some(30_000)),
                (b"c".to_vec(), vec![], None)
            ]
        );
        assert_eq!(
            grants(br#"[{"key_base64": "fwAAyA", "ttl": "1h 30m"}]"#).unwrap(),
            vec![(vec![127, 0, 0, 200], vec![], Some(5_400_000))]
        );
        for bad in [
            &b"["[..],
            b"{}",
            b"[]",
            b"[1]",
            b"[\"\"]",
            br#"[{"ttl": 3}]"#,
            br#"[{"key": "a", "ttl": -1}]"#,
            br#"[{"key": "a", "ttl": "soon"}]"#,
            br#"[{"key": "a", "owner": "me"}]"#,
            br#"[{"key": "a", "key_base64": "YQ"}]"#,
            br#"[{"key_base64": "not base64!"}]"#,
            br#"[{"key_base64": ""}]"#,
            b"[[[[[[[[]]]]]]]]",
        ] {
            assert_eq!(grants(bad).unwrap_err().status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn patch_bodies() {
        let p =
            patch(br#"{"block_ratio": 0.5, "max_permits": null, "start": "2021-08-08T00:00:00Z"}"#)
                .unwrap();
        assert_eq!(
            p,
            OverridesPatch {
                block_ratio: Some(Some(0.5)),
                max_permits: Some(None),
                start_ms: Some(Some(1_628_380_800_000)),
                end_ms: None,
                queue_rate: None
            }
        );
        for bad in [
            &b"{}"[..],
            b"[]",
            b"{",
            br#"{"block_ratio": 2}"#,
            br#"{"max_permits": -3}"#,
            br#"{"max_permits": 1.5}"#,
            br#"{"start": "tomorrow"}"#,
            br#"{"start": 5}"#,
            br#"{"ratio": 0.5}"#,
        ] {
            assert_eq!(patch(bad).unwrap_err().status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_patch_must_leave_the_sale_some_time() {
        let now = Overrides { start_ms: Some(1_000), ..Overrides::default() };
        let end = |ms| OverridesPatch { end_ms: Some(Some(ms)), ..OverridesPatch::default() };
        assert_eq!(patched(&now, &end(2_000)), Ok(Overrides { end_ms: Some(2_000), ..now }));
        for bad in [1_000, 999] {
            let refused = patched(&now, &end(bad)).unwrap_err();
            assert_eq!(refused, ApiError::new(400, "end must be after start"));
        }
        let both = OverridesPatch { start_ms: Some(None), ..end(999) };
        assert_eq!(patched(&now, &both).map(|o| o.end_ms), Ok(Some(999)), "no start any more");
    }

    #[test]
    fn overrides_as_json() {
        assert_eq!(
            overrides_json(&Overrides::default()).to_string(),
            r#"{"block_ratio":null,"end":null,"max_permits":null,"queue_rate":null,"start":null}"#
        );
        let all = Overrides {
            block_ratio: Some(0.25),
            max_permits: Some(7),
            start_ms: Some(1_628_380_800_000),
            end_ms: Some(1_628_380_800_250),
            queue_rate: Some(20_000),
        };
        assert_eq!(
            overrides_json(&all).to_string(),
            r#"{"block_ratio":0.25,"end":"2021-08-08T00:00:00.250Z","max_permits":7,"queue_rate":"20r/s","start":"2021-08-08T00:00:00.000Z"}"#
        );
        let slow = Overrides { queue_rate: Some(10_000 / 60), ..Overrides::default() };
        assert_eq!(overrides_json(&slow)["queue_rate"], "10r/m");
        assert_eq!(
            patch(br#"{"queue_rate": "600r/m"}"#).map(|p| p.queue_rate),
            Ok(Some(Some(10_000)))
        );
        assert_eq!(patch(br#"{"queue_rate": null}"#).map(|p| p.queue_rate), Ok(Some(None)));
        for bad in
            [r#"{"queue_rate": "0r/s"}"#, r#"{"queue_rate": 20}"#, r#"{"queue_rate": "fast"}"#]
        {
            assert_eq!(
                patch(bad.as_bytes()),
                Err(ApiError::new(
                    400,
                    r#"queue_rate: expected a rate such as "20r/s" or "600r/m" or null"#
                )),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_and_permits_as_json() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_628_380_800_250), "2021-08-08T00:00:00.250Z");
        assert_eq!(parse::rfc3339_ms(&rfc3339(951_782_400_000)), Some(951_782_400_000));
        let p = PermitInfo {
            item: Vec::new(),
            key: b"alice".to_vec(),
            seq: 3,
            granted_ms: 0,
            expires_ms: None,
        };
        assert_eq!(
            permit_json(&p, KeyKind::Bytes).to_string(),
            r#"{"expires":null,"granted":"1970-01-01T00:00:00.000Z","item":null,"key":"alice","key_base64":"YWxpY2U","seq":3}"#
        );
        let red = PermitInfo { item: b"red-42".to_vec(), ..p.clone() };
        assert_eq!(permit_json(&red, KeyKind::Bytes)["item"], "red-42");
        let page = page_json(&[p.clone(), p.clone()], 2, KeyKind::Bytes);
        assert_eq!(page["next"], json!(cursor(&Cursor::of(&p))));
        assert_eq!(page_json(&[], 2, KeyKind::Bytes)["next"], Value::Null);
        assert_eq!(ApiError::new(404, "no \"zone\"").body(), r#"{"error":"no \"zone\""}"#);
    }

    #[test]
    fn redis_replies_answer_like_the_zone() {
        use crate::sale::Held;
        let amy = RemoteAsk { key: b"amy".to_vec(), ..RemoteAsk::default() };
        let held = Held { seq: 4, expires_ms: Some(1_628_380_800_000) };
        let (status, body) = remote_answer(&amy, Reply::Permit(Some(held))).unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({ "key": "amy", "key_base64": "YW15", "item": null, "seq": 4, "expires": "2021-08-08T00:00:00.000Z" })
        );
        let red = RemoteAsk { item: b"red-42".to_vec(), ..RemoteAsk::default() };
        let (_, body) = remote_answer(&red, Reply::Permit(Some(held))).unwrap();
        assert_eq!(body["item"], "red-42");
        assert_eq!(remote_answer(&amy, Reply::Permit(None)).unwrap_err().status, 404);
        assert_eq!(
            remote_answer(&amy, Reply::Revoked(Some(4))).unwrap().1,
            json!({ "revoked": 1 })
        );
        assert_eq!(remote_answer(&amy, Reply::Revoked(None)).unwrap_err().status, 404);
        let none = RemoteAsk::default();
        assert_eq!(remote_answer(&none, Reply::Cleared(7)).unwrap().1, json!({ "revoked": 7 }));
        let granted = Reply::Granted { granted: 2, already: 1, permits: 4 };
        let capped = RemoteAsk { cap: Some(3), ..RemoteAsk::default() };
        assert_eq!(remote_answer(&capped, granted).unwrap().1["over_cap"], json!(true));
    }

    #[test]
    fn redis_permits_are_listed_in_pages() {
        let permits: Vec<PermitInfo> = (1..=5)
            .map(|seq| PermitInfo {
                item: Vec::new(),
                key: format!("k{seq}").into_bytes(),
                seq,
                granted_ms: 0,
                expires_ms: None,
            })
            .collect();
        let ask = |after: Option<&Value>, limit| RemoteAsk {
            page: Some(Page {
                limit,
                after: after.and_then(|a| cursor_from(a.as_str()?.as_bytes())),
            }),
            ..RemoteAsk::default()
        };
        let list = |ask: RemoteAsk| remote_answer(&ask, Reply::Permits(permits.clone())).unwrap().1;
        let first = list(ask(None, 2));
        assert_eq!(first["permits"].as_array().unwrap().len(), 2);
        let second = list(ask(Some(&first["next"]), 2));
        assert_eq!(second["permits"][0]["key"], json!("k3"));
        let last = list(ask(Some(&second["next"]), 2));
        assert_eq!(last["permits"][0]["key"], json!("k5"));
        assert_eq!(last["next"], json!(null));
        // A cursor whose permit is gone leads on from its number.
        let gone = Cursor { expires_ms: None, seq: 3, key: b"gone".to_vec() };
        let after_gone =
            RemoteAsk { page: Some(Page { limit: 5, after: Some(gone) }), ..RemoteAsk::default() };
        assert_eq!(list(after_gone)["permits"][0]["key"], json!("k4"));
    }

    #[test]
    fn item_routes() {
        let get = |path: &[u8], args: &[u8]| route(path, args, true);
        assert_eq!(get(b"zones/drop/items", b""), Ok(Route::Items("drop".into())));
        assert_eq!(
            get(b"zones/drop/items", b"limit=2&after=AAAAAAAAAAE"),
            Ok(Route::Items("drop".into()))
        );
        assert_eq!(
            get(b"zones/drop/items/red%2D42", b""),
            Ok(Route::Item("drop".into(), b"red-42".to_vec()))
        );
        assert_eq!(
            route(b"zones/drop/items/a%2Fb", b"", false),
            Ok(Route::Item("drop".into(), b"a/b".to_vec()))
        );
        assert_eq!(
            get(b"zones/drop/permits/bob", b"item=red%2D42"),
            Ok(Route::Permit("drop".into(), b"bob".to_vec(), b"red-42".to_vec()))
        );
        assert_eq!(
            route(b"zones/drop/permits/Ym9i", b"encoding=base64&item=blue", false),
            Ok(Route::Permit("drop".into(), b"bob".to_vec(), b"blue".to_vec()))
        );
        let long = format!("zones/drop/items/{}", "x".repeat(257));
        for (path, args, reading, status) in [
            (&b"zones/drop/items/"[..], &b""[..], true, 400),
            (long.as_bytes(), b"", true, 400),
            (b"zones/drop/items/%zz", b"", true, 400),
            (b"zones/drop/items/red/x", b"", true, 404),
            (b"zones//items", b"", true, 404),
            // A listing's parameters are for reading it; an item takes none.
            (b"zones/drop/items", b"limit=1", false, 400),
            (b"zones/drop/items", b"x=1", true, 400),
            (b"zones/drop/items/red", b"limit=1", true, 400),
            (b"zones/drop/items/red", b"item=red", false, 400),
            // An item is 1 to 256 bytes, named once.
            (b"zones/drop/permits/bob", b"item=", true, 400),
            (b"zones/drop/permits/bob", b"item=%z", false, 400),
            (b"zones/drop/permits/bob", b"item=a&item=b", false, 400),
            (b"zones/drop/permits", b"item=a", false, 400),
        ] {
            let refused = route(path, args, reading).unwrap_err();
            assert_eq!(refused.status, status, "{:?} {:?}", String::from_utf8_lossy(path), args);
            assert!(refused.body().starts_with(r#"{"error":""#));
        }
    }

    #[test]
    fn item_pages() {
        assert_eq!(item_page(b""), Ok(ItemPage { limit: DEFAULT_PAGE, after: None }));
        let page = item_page(b"limit=2&after=AAAAAAAAAAE").unwrap();
        assert_eq!((page.limit, page.after_number()), (2, Ok(1)));
        assert_eq!(item_page(b"after=cmVk").unwrap().after.as_deref(), Some(&b"red"[..]));
        assert_eq!(item_page(b"after=cmVk").unwrap().after_number().unwrap_err().status, 400);
        for bad in [&b"limit=0"[..], b"limit=1001", b"limit=x", b"after=", b"after=a*b"] {
            assert_eq!(item_page(bad).unwrap_err().status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn items_as_json() {
        let red = ItemInfo {
            item: b"red-42".to_vec(),
            number: 1,
            permits: 3,
            registered: 2,
            max_permits: Some(10),
            stock: Some(12),
        };
        assert_eq!(
            item_json(&red, true, None).to_string(),
            r#"{"cap":10,"item":"red-42","left":7,"max_permits":10,"permits":3,"registered":2,"stock":12}"#
        );
        let configured = ItemInfo { max_permits: None, permits: 13, ..red.clone() };
        assert_eq!(item_json(&configured, true, None)["cap"], 12);
        assert_eq!(item_json(&configured, true, None)["left"], 0);
        let free = ItemInfo { max_permits: None, stock: None, ..red.clone() };
        assert_eq!(
            item_json(&free, false, None).to_string(),
            r#"{"cap":null,"item":"red-42","left":null,"max_permits":null,"permits":3,"registered":null,"stock":null}"#
        );
        // An item no request has been decided for: the zone's cap.
        assert_eq!(item_json(&free, true, Some(2))["cap"], 2);
        assert_eq!(item_json(&free, true, Some(2))["left"], 0);
        assert_eq!(item_json(&configured, true, Some(2))["cap"], 12, "what the request had wins");
        let blue = ItemInfo { item: b"blue-43".to_vec(), number: 4, ..red.clone() };
        let both = [red.clone(), blue.clone()];
        // A full page leads on from its last item: its number here, the item itself in Redis.
        let here = items_page_json(&both, 2, false, None);
        assert_eq!(here["next"], "AAAAAAAAAAQ");
        assert_eq!(here["items"][1]["item"], "blue-43");
        let next = item_page(format!("after={}", here["next"].as_str().unwrap()).as_bytes());
        assert_eq!(next.unwrap().after_number(), Ok(4));
        let remote = items_page_json(&both, 2, true, None);
        assert_eq!(remote["next"], key_base64(b"blue-43"));
        assert_eq!(remote["items"][0]["registered"], Value::Null);
        assert_eq!(items_page_json(&both, 3, false, None)["next"], Value::Null);
        assert_eq!(items_page_json(&[], 3, false, None).to_string(), r#"{"items":[],"next":null}"#);
        // Redis's replies answer the same.
        let ask = RemoteAsk { item_page: item_page(b"limit=1").ok(), ..RemoteAsk::default() };
        let (_, page) = remote_answer(&ask, Reply::Items(vec![blue.clone()])).unwrap();
        assert_eq!(page["next"], key_base64(b"blue-43"));
        assert_eq!(remote_answer(&ask, Reply::Item(None)).unwrap_err().status, 404);
        assert_eq!(remote_answer(&ask, Reply::Item(Some(blue))).unwrap().1["item"], "blue-43");
    }

    #[test]
    fn item_patch_bodies() {
        assert_eq!(item_patch(br#"{"max_permits": 10}"#), Ok(Some(10)));
        assert_eq!(item_patch(br#"{"max_permits": 0}"#), Ok(Some(0)));
        assert_eq!(item_patch(br#"{"max_permits": null}"#), Ok(None));
        assert_eq!(item_patch(br#"{"max_permits": 9007199254740991}"#), Ok(Some(MAX_ITEM_STOCK)));
        for bad in [
            &b"{}"[..],
            b"[]",
            b"{",
            b"",
            b"null",
            br#"{"max_permits": -1}"#,
            br#"{"max_permits": 1.5}"#,
            br#"{"max_permits": "3"}"#,
            br#"{"max_permits": 9007199254740992}"#,
            br#"{"max_permits": 18446744073709551615}"#,
            br#"{"stock": 3}"#,
            br#"{"max_permits": 3, "block_ratio": 0.5}"#,
        ] {
            let refused = item_patch(bad).unwrap_err();
            assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn an_item_that_is_not_text_is_told_apart_by_its_bytes() {
        let odd = ItemInfo { item: vec![0xff, 0xfe], ..ItemInfo::default() };
        let other = ItemInfo { item: vec![0xfe, 0xff], ..ItemInfo::default() };
        assert_eq!(item_json(&odd, true, None)["item"], item_json(&other, true, None)["item"]);
        assert_eq!(item_json(&odd, true, None)["item_base64"], "__4");
        assert_eq!(item_json(&other, true, None)["item_base64"], "_v8");
        let text = ItemInfo { item: b"red-42".to_vec(), ..ItemInfo::default() };
        assert!(item_json(&text, true, None).get("item_base64").is_none());
        let permit = PermitInfo { key: b"amy".to_vec(), item: vec![0xff], ..PermitInfo::default() };
        assert_eq!(permit_json(&permit, KeyKind::Bytes)["item_base64"], "_w");
    }
}
