//! The admin API's requests and answers, in plain Rust: routes, query strings, JSON bodies.
//! The glue (`endpoints.rs`) reads the request, calls the zone, and sends what this builds.

use serde_json::{json, Value};

use crate::parse;
use crate::remote::Reply;
use crate::zone::{Grant, PermitInfo};

/// What a path under the API's location names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Zones,
    Zone(String),
    Permits(String),
    Permit(String, Vec<u8>),
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

/// Routes a raw (still percent-encoded) path relative to the API's location.
pub fn route(path: &[u8]) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(404, "no such endpoint; try GET zones");
    let path = path.strip_prefix(b"/").unwrap_or(path);
    let parts: Vec<&[u8]> = path.split(|&c| c == b'/').collect();
    let name = |raw: &[u8]| -> Result<String, ApiError> {
        let decoded =
            percent_decode(raw).ok_or_else(|| ApiError::new(400, "bad percent-encoding"))?;
        String::from_utf8(decoded).map_err(|_| ApiError::new(400, "zone names are UTF-8"))
    };
    match parts.as_slice() {
        [b"zones"] | [b"zones", b""] => Ok(Route::Zones),
        [b"zones", zone] if !zone.is_empty() => Ok(Route::Zone(name(zone)?)),
        [b"zones", zone, b"permits"] | [b"zones", zone, b"permits", b""] if !zone.is_empty() => {
            Ok(Route::Permits(name(zone)?))
        }
        [b"zones", zone, b"permits", key] if !zone.is_empty() => {
            let key =
                percent_decode(key).ok_or_else(|| ApiError::new(400, "bad percent-encoding"))?;
            Ok(Route::Permit(name(zone)?, key))
        }
        _ => Err(not_found()),
    }
}

/// Decodes `%XX` escapes; `None` for a malformed one.
pub fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&c) = bytes.next() {
        if c == b'%' {
            let hex = [*bytes.next()?, *bytes.next()?];
            out.push(u8::from_str_radix(core::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// `?limit=N&after=KEY` of a permit listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub after: Option<Vec<u8>>,
}

pub fn page(args: &[u8]) -> Result<Page, ApiError> {
    let mut page = Page { limit: DEFAULT_PAGE, after: None };
    for pair in args.split(|&c| c == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&c| c == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let bad = |what: &str| ApiError::new(400, format!("bad {what}"));
        match name {
            b"limit" => {
                let text = core::str::from_utf8(value).map_err(|_| bad("limit"))?;
                page.limit = parse::cap(text)
                    .filter(|&n| (1..=MAX_PAGE as u64).contains(&n))
                    .ok_or_else(|| bad("limit: a number from 1 to 1000"))?
                    as usize;
            }
            b"after" => page.after = Some(percent_decode(value).ok_or_else(|| bad("after"))?),
            _ => {}
        }
    }
    Ok(page)
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

/// The body of `POST zones/NAME/permits`: `["key", ...]` or `[{"key": "...", "ttl": "10m"}]`.
pub fn grants(body: &[u8]) -> Result<Vec<Grant>, ApiError> {
    let Value::Array(items) = parse_json(body)? else {
        return Err(ApiError::new(400, "expected a JSON array of keys"));
    };
    if items.is_empty() {
        return Err(ApiError::new(400, "no keys to grant"));
    }
    let key = |k: &str| -> Result<Vec<u8>, ApiError> {
        if k.is_empty() || k.len() > crate::sale::MAX_KEY_LEN {
            return Err(ApiError::new(400, "a key is 1 to 1024 bytes"));
        }
        Ok(k.as_bytes().to_vec())
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(k) => Ok((key(k)?, None)),
            Value::Object(o) => {
                if let Some(unknown) = o.keys().find(|k| !["key", "ttl"].contains(&k.as_str())) {
                    return Err(ApiError::new(400, format!("unknown field \"{unknown}\"")));
                }
                match o.get("key") {
                    Some(Value::String(k)) => {
                        Ok((key(k)?, ttl(o.get("ttl").unwrap_or(&Value::Null))?))
                    }
                    _ => Err(ApiError::new(400, "each object needs a \"key\" string")),
                }
            }
            _ => Err(ApiError::new(400, "each item is a key or an object with a key")),
        })
        .collect()
}

/// The body of `PATCH zones/NAME`: any of block_ratio, max_permits, start, end; null clears.
#[derive(Debug, Default, PartialEq)]
pub struct Patch {
    pub block_ratio: Option<Option<f64>>,
    pub max_permits: Option<Option<u64>>,
    pub start_ms: Option<Option<i64>>,
    pub end_ms: Option<Option<i64>>,
}

pub fn patch(body: &[u8]) -> Result<Patch, ApiError> {
    let Value::Object(fields) = parse_json(body)? else {
        return Err(ApiError::new(400, "expected a JSON object"));
    };
    let mut patch = Patch::default();
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
            other => return Err(ApiError::new(400, format!("unknown field \"{other}\""))),
        }
    }
    if fields.is_empty() {
        return Err(ApiError::new(400, "nothing to change"));
    }
    Ok(patch)
}

/// A permit as JSON. Keys are shown as text where they are UTF-8, else with escapes.
pub fn permit_json(p: &PermitInfo) -> Value {
    json!({
        "key": String::from_utf8_lossy(&p.key),
        "seq": p.seq,
        "granted": rfc3339(p.granted_ms),
        "expires": p.expires_ms.map(rfc3339),
    })
}

/// What an API request on a zone kept in Redis asked, besides the zone: the permit's key, the
/// page of a listing, the cap a grant is compared with.
#[derive(Debug, Default)]
pub struct RemoteAsk {
    pub key: Vec<u8>,
    pub page: Option<Page>,
    pub cap: Option<u64>,
}

/// The answer to an API request on a zone kept in Redis, from Redis's reply; the same JSON as
/// for a zone kept here.
pub fn remote_answer(ask: &RemoteAsk, reply: Reply) -> Result<(u16, Value), ApiError> {
    let no_permit = || ApiError::new(404, "no permit for this key");
    match reply {
        Reply::Permit(held) => {
            let held = held.ok_or_else(no_permit)?;
            Ok((
                200,
                json!({
                    "key": String::from_utf8_lossy(&ask.key),
                    "seq": held.seq,
                    "expires": held.expires_ms.map(rfc3339),
                }),
            ))
        }
        Reply::Revoked(seq) => seq.map(|_| (200, json!({ "revoked": 1 }))).ok_or_else(no_permit),
        Reply::Cleared(revoked) => Ok((200, json!({ "revoked": revoked }))),
        Reply::Permits(permits) => {
            let page = ask.page.as_ref().ok_or_else(|| ApiError::new(500, "no page asked"))?;
            let start = match &page.after {
                Some(after) => {
                    1 + permits.iter().position(|p| p.key == *after).ok_or_else(|| {
                        ApiError::new(404, "no permit for \"after\"; start again without it")
                    })?
                }
                None => 0,
            };
            let end = permits.len().min(start.saturating_add(page.limit));
            Ok((200, page_json(&permits[start..end], page.limit)))
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
        Reply::Admission(_) | Reply::DrawSecret(_) | Reply::Overrides(_) => {
            Err(ApiError::new(500, "unexpected reply from Redis"))
        }
    }
}

/// A page of permits and the cursor of the next one.
pub fn page_json(permits: &[PermitInfo], limit: usize) -> Value {
    let next =
        (permits.len() == limit).then(|| permits.last().map(|p| String::from_utf8_lossy(&p.key)));
    json!({ "permits": permits.iter().map(permit_json).collect::<Vec<_>>(), "next": next.flatten() })
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
        assert_eq!(route(b"zones"), Ok(Route::Zones));
        assert_eq!(route(b"/zones/"), Ok(Route::Zones));
        assert_eq!(route(b"zones/laptop"), Ok(Route::Zone("laptop".into())));
        assert_eq!(route(b"zones/laptop/permits"), Ok(Route::Permits("laptop".into())));
        assert_eq!(
            route(b"zones/laptop/permits/Bearer%20a%2Fb"),
            Ok(Route::Permit("laptop".into(), b"Bearer a/b".to_vec()))
        );
        assert_eq!(
            route(b"zones/laptop/permits/%ff").unwrap(),
            Route::Permit("laptop".into(), vec![0xff])
        );
        for bad in
            [&b""[..], b"zone", b"zones/laptop/other", b"zones//permits", b"zones/a/permits/k/x"]
        {
            assert_eq!(route(bad).unwrap_err().status, 404, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(route(b"zones/laptop/permits/%zz").unwrap_err().status, 400);
        assert_eq!(route(b"zones/laptop/permits/%4").unwrap_err().status, 400);
    }

    #[test]
    fn pages() {
        assert_eq!(page(b""), Ok(Page { limit: 100, after: None }));
        assert_eq!(
            page(b"limit=2&after=a%20b"),
            Ok(Page { limit: 2, after: Some(b"a b".to_vec()) })
        );
        for bad in [&b"limit=0"[..], b"limit=1001", b"limit=-1", b"limit=x", b"after=%z"] {
            assert_eq!(page(bad).unwrap_err().status, 400);
        }
    }

    #[test]
    fn grant_bodies() {
        assert_eq!(
            grants(br#"["a", "b"]"#).unwrap(),
            vec![(b"a".to_vec(), None), (b"b".to_vec(), None)]
        );
        assert_eq!(
            grants(br#"[{"key": "a", "ttl": "10m"}, {"key": "b", "ttl": 30}, {"key": "c"}]"#)
                .unwrap(),
            vec![
                (b"a".to_vec(), Some(600_000)),
                (b"b".to_vec(), Some(30_000)),
                (b"c".to_vec(), None)
            ]
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
            Patch {
                block_ratio: Some(Some(0.5)),
                max_permits: Some(None),
                start_ms: Some(Some(1_628_380_800_000)),
                end_ms: None
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
    fn times_and_permits_as_json() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_628_380_800_250), "2021-08-08T00:00:00.250Z");
        assert_eq!(parse::rfc3339_ms(&rfc3339(951_782_400_000)), Some(951_782_400_000));
        let p = PermitInfo { key: b"alice".to_vec(), seq: 3, granted_ms: 0, expires_ms: None };
        assert_eq!(
            permit_json(&p).to_string(),
            r#"{"expires":null,"granted":"1970-01-01T00:00:00.000Z","key":"alice","seq":3}"#
        );
        let page = page_json(&[p.clone(), p], 2);
        assert_eq!(page["next"], "alice");
        assert_eq!(page_json(&[], 2)["next"], Value::Null);
        assert_eq!(ApiError::new(404, "no \"zone\"").body(), r#"{"error":"no \"zone\""}"#);
    }

    #[test]
    fn redis_replies_answer_like_the_zone() {
        use crate::sale::Held;
        let amy = RemoteAsk { key: b"amy".to_vec(), ..RemoteAsk::default() };
        let held = Held { seq: 4, expires_ms: Some(1_628_380_800_000) };
        let (status, body) = remote_answer(&amy, Reply::Permit(Some(held))).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, json!({ "key": "amy", "seq": 4, "expires": "2021-08-08T00:00:00.000Z" }));
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
                key: format!("k{seq}").into_bytes(),
                seq,
                granted_ms: 0,
                expires_ms: None,
            })
            .collect();
        let ask = |after: Option<&str>, limit| RemoteAsk {
            page: Some(Page { limit, after: after.map(|a| a.as_bytes().to_vec()) }),
            ..RemoteAsk::default()
        };
        let list = |ask: RemoteAsk| remote_answer(&ask, Reply::Permits(permits.clone()));
        let first = list(ask(None, 2)).unwrap().1;
        assert_eq!(first["permits"].as_array().unwrap().len(), 2);
        assert_eq!(first["next"], json!("k2"));
        let last = list(ask(Some("k4"), 2)).unwrap().1;
        assert_eq!(last["permits"][0]["key"], json!("k5"));
        assert_eq!(last["next"], json!(null));
        assert_eq!(list(ask(Some("gone"), 2)).unwrap_err().status, 404);
    }
}
