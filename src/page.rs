//! What a rejected buyer is told, in plain Rust: the representation the request's `Accept`
//! asks for (RFC 9110, section 12.5.1), and the answer in it: the one line of text every
//! rejection had so far, a small HTML page for a browser, or JSON for a program.
//!
//! Nothing here knows about nginx. The glue hands over what the answer is about ([`Words`]:
//! an outcome's, or a token refusal's), its [`Figures`] (the seconds to the start and to the
//! end, when to ask again, a place in line) and the request's `Accept`; this chooses the
//! representation ([`negotiate`]) and writes the body ([`render`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use mediatype::{MediaType, MediaTypeList, Name, Value};

use crate::sale::{Outcome, Window};

/// What an answer says, in every representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Words {
    /// The name: `$flash_sale_status`'s value (`SOLD_OUT`), or a token refusal's.
    pub name: &'static str,
    /// The one-line text answer (`SOLD_OUT: what you asked for is sold out.\n`), byte for byte.
    pub line: &'static str,
    /// The page's heading, in plain words.
    pub heading: &'static str,
    /// What is happening, and what the buyer can do, in plain words.
    pub sentence: &'static str,
}

impl Words {
    /// An outcome's words. Every outcome has its own: a new one does not build until it is
    /// given them here.
    pub const fn of(outcome: Outcome) -> Words {
        let (heading, sentence) = match outcome {
            Outcome::NoKey => (
                "Sign in to take part",
                "This sale needs to know who is buying, and this request did not say. Sign in, \
                 then open this page again.",
            ),
            Outcome::KeyTooLong => (
                "Your sign-in cannot be used here",
                "The identity this request carries is longer than this sale accepts. Sign in \
                 again, then open this page again.",
            ),
            Outcome::NoItem => (
                "Choose what to buy",
                "This sale sells several items, and this request did not say which one. Go \
                 back to the shop's page and choose one.",
            ),
            Outcome::ItemTooLong => (
                "This item cannot be bought here",
                "The item this request names is longer than this sale accepts. Go back to the \
                 shop's page and choose it again.",
            ),
            Outcome::LimitReached => (
                "You have reached the limit",
                "You already hold as many items of this sale as one buyer may. Finish buying \
                 them; you cannot take another.",
            ),
            Outcome::NotStarted => (
                "The sale has not started yet",
                "Keep this page open: it reloads by itself when the sale starts.",
            ),
            Outcome::Prequeued => (
                "You are in the draw",
                "You are registered for the draw at the start. Keep this page open: it reloads \
                 by itself when the sale starts, and then shows whether you were drawn.",
            ),
            Outcome::Ended => ("The sale has ended", "This sale is over and takes no more orders."),
            Outcome::Permitted | Outcome::Admitted => ("You are in", "You may buy now."),
            Outcome::SoldOut => ("Sold out", "What you asked for has all been sold."),
            Outcome::Blocked => (
                "Not this time",
                "More people want to buy than there is stock, so a random draw decides who may \
                 buy. It did not pick you this time.",
            ),
            Outcome::Unavailable => (
                "Please wait a moment",
                "The sale cannot take new buyers right now. Keep this page open: it tries again \
                 by itself in a few seconds.",
            ),
            Outcome::Queued => (
                "You are in line",
                "Buyers are let in a few at a time, in the order they came. Keep this page open: \
                 it reloads by itself and takes you to the shop when your turn comes. Reloading \
                 it yourself neither helps nor hurts.",
            ),
        };
        Words { name: outcome.as_str(), line: outcome.message(), heading, sentence }
    }
}

impl From<Outcome> for Words {
    fn from(outcome: Outcome) -> Words {
        Words::of(outcome)
    }
}

/// The figures an answer gives, in whole seconds; `None` where one does not apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// The buyer's place in a waiting line.
    pub position: Option<u64>,
    /// The estimated wait until his turn.
    pub wait_seconds: Option<u64>,
    /// When to ask again: `Retry-After`, and the HTML page's automatic refresh.
    pub retry_after: Option<u64>,
    /// The time to the sale's start, before it.
    pub starts_in: Option<i64>,
    /// The time to the sale's end, before it, when the sale has one.
    pub ends_in: Option<i64>,
}

/// How soon an `UNAVAILABLE` buyer is told to ask again: the shared store (Redis) is retried
/// once a second, and an outage is mostly short.
pub const UNAVAILABLE_RETRY_AFTER: u64 = 5;

/// The longest automatic refresh a page asks for: 2^31 milliseconds, the longest timer some
/// browsers keep (a longer one may fire at once). A page for a sale further away reloads after
/// 24 days and asks again; its `Retry-After` is the whole time.
pub const MAX_REFRESH: u64 = 2_147_483;

impl Figures {
    /// The figures of an outcome decided at `now_ms` in a sale of `window`: the time to its
    /// start and end wherever they lie ahead, and when to ask again: at the start for
    /// `NOT_STARTED` and `PREQUEUED` (as `Retry-After` always said), in a few seconds for
    /// `UNAVAILABLE`, and never for the others, whose answer asking again does not change.
    pub fn of(outcome: Outcome, window: &Window, now_ms: i64) -> Figures {
        let to_start = window.seconds_to_start(now_ms);
        let retry_after = match outcome {
            Outcome::NotStarted | Outcome::Prequeued => Some(to_start.max(0) as u64),
            Outcome::Unavailable => Some(UNAVAILABLE_RETRY_AFTER),
            // The line's figures are the caller's: see `gate::verdict::conclude`.
            Outcome::Queued => None,
            Outcome::NoKey
            | Outcome::KeyTooLong
            | Outcome::NoItem
            | Outcome::ItemTooLong
            | Outcome::LimitReached
            | Outcome::Ended
            | Outcome::Permitted
            | Outcome::SoldOut
            | Outcome::Blocked
            | Outcome::Admitted => None,
        };
        Figures {
            retry_after,
            starts_in: Some(to_start).filter(|&s| s > 0),
            ends_in: window.seconds_to_end(now_ms).filter(|&s| s > 0),
            ..Figures::default()
        }
    }
}

/// The answers on offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// One line of `text/plain`, as every rejection was answered before.
    Text,
    /// A page for a browser.
    Html,
    /// The figures for a program.
    Json,
}

impl Representation {
    /// The media type, without parameters.
    pub const fn mime(self) -> &'static str {
        match self {
            Representation::Text => "text/plain",
            Representation::Html => "text/html",
            Representation::Json => "application/json",
        }
    }

    /// The `charset` parameter sent with the media type.
    pub const fn charset(self) -> Option<&'static str> {
        match self {
            Representation::Html => Some("utf-8"),
            Representation::Text | Representation::Json => None,
        }
    }

    /// The whole `Content-Type` value.
    pub fn content_type(self) -> Cow<'static, str> {
        match self.charset() {
            Some(charset) => Cow::Owned(format!("{}; charset={charset}", self.mime())),
            None => Cow::Borrowed(self.mime()),
        }
    }
}

/// The representations in the order a tie between them is settled: the text first (what
/// every client got before), then JSON (a client that names JSON at all is a program; a
/// browser ranks HTML above everything else).
const OFFERS: [Representation; 3] =
    [Representation::Text, Representation::Json, Representation::Html];

/// The representation a request's `Accept` header (`None`: no header) prefers, by RFC 9110's
/// rules: each representation gets the weight (`q`, default 1) of the most specific media
/// range that matches it (`text/html` over `text/*` over `*/*`, more parameters over fewer),
/// `q=0` makes it not acceptable, and the highest weight wins, a tie going to the first of
/// text, JSON, HTML. When none is acceptable, or the header cannot be read, the answer is the
/// text, as it was before (RFC 9110 lets a server disregard such a header).
///
/// A request without the header, with `*/*` (curl's), or with one that names neither HTML nor
/// JSON nor a wildcard cannot prefer anything but the text, and is answered without parsing.
#[inline]
pub fn negotiate(accept: Option<&[u8]>) -> Representation {
    match accept {
        None => Representation::Text,
        Some(b"*/*") => Representation::Text,
        Some(accept) => weigh(accept),
    }
}

/// [`negotiate`] for a header that is there and not `*/*`.
#[inline(never)]
fn weigh(accept: &[u8]) -> Representation {
    if !may_prefer_another(accept) {
        return Representation::Text;
    }
    let Ok(accept) = core::str::from_utf8(accept) else {
        return Representation::Text;
    };
    // The most specific range matching each offer so far, and its weight.
    let mut best: [Option<(Specificity, u16)>; OFFERS.len()] = [None; OFFERS.len()];
    // A member that is not a media range is skipped, as browsers and servers do.
    for range in MediaTypeList::new(accept).filter_map(Result::ok) {
        let Some((q, params)) = weight(&range) else {
            continue;
        };
        for (offer, best) in OFFERS.iter().zip(best.iter_mut()) {
            if let Some(specificity) = matches(&range, params, *offer) {
                if best.is_none_or(|(known, _)| specificity > known) {
                    *best = Some((specificity, q));
                }
            }
        }
    }
    let mut chosen = (Representation::Text, 0);
    for (offer, best) in OFFERS.iter().zip(best) {
        let q = best.map_or(0, |(_, q)| q);
        if q > chosen.1 {
            chosen = (*offer, q);
        }
    }
    chosen.0
}

/// How specific a media range is: 0 for `*/*`, 1 for `type/*`, 2 for `type/subtype`, then
/// its number of parameters.
type Specificity = (u8, usize);

/// Whether an `Accept` value holds a range that can match HTML or JSON: one that names them
/// (`text/html`, `application/json`), or a wildcard (`text/*`, `application/*`, `*/*`). Without
/// one, only the text can be acceptable.
fn may_prefer_another(accept: &[u8]) -> bool {
    accept.contains(&b'*')
        || accept
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"html") || w.eq_ignore_ascii_case(b"json"))
}

/// A range's weight, in thousandths, and its media type parameters (those before `q`); `None`
/// for a weight that is not a qvalue.
fn weight<'r, 'a>(range: &'r MediaType<'a>) -> Option<(u16, &'r [(Name<'a>, Value<'a>)])> {
    let params = &range.params[..];
    match params.iter().position(|(name, _)| *name == "q") {
        None => Some((1000, params)),
        Some(at) => Some((qvalue(params[at].1.as_str())?, &params[..at])),
    }
}

/// A qvalue (`0`, `0.5`, `0.125`, `1`, `1.000`) in thousandths; `None` for anything else.
fn qvalue(s: &str) -> Option<u16> {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(core::iter::repeat(b'0'))
        .take(3)
        .fold(0, |n, digit| n * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// How specifically `range` (with its media type `params`) matches `offer`; `None` when it
/// does not. A parameter matches only one the offer has (`text/html;charset=utf-8`).
fn matches(
    range: &MediaType<'_>,
    params: &[(Name<'_>, Value<'_>)],
    offer: Representation,
) -> Option<Specificity> {
    let (ty, subty) = offer.mime().split_once('/')?;
    let level = match (range.ty == "*", range.subty == "*") {
        (true, true) => 0,
        (false, true) if range.ty == ty => 1,
        (false, false) if range.ty == ty && range.subty == subty && range.suffix.is_none() => 2,
        _ => return None,
    };
    let offered = |(name, value): &(Name<'_>, Value<'_>)| {
        *name == "charset"
            && offer.charset().is_some_and(|c| value.unquoted_str().eq_ignore_ascii_case(c))
    };
    params.iter().all(offered).then_some((level, params.len()))
}

/// The body of an answer in `representation`: the text is the outcome's line itself, with
/// nothing copied; the page and the JSON are written for the figures.
#[inline]
pub fn render(
    words: &Words,
    figures: &Figures,
    representation: Representation,
) -> Cow<'static, str> {
    match representation {
        Representation::Text => Cow::Borrowed(words.line),
        Representation::Json => Cow::Owned(json(words, figures)),
        Representation::Html => Cow::Owned(html(words, figures)),
    }
}

/// `{"status": "SOLD_OUT", "position": null, "wait_seconds": null, "retry_after": null,
/// "starts_in": null, "ends_in": 3600}` and a line break.
#[inline(never)]
fn json(words: &Words, f: &Figures) -> String {
    fn number(n: Option<impl core::fmt::Display>) -> String {
        n.map_or_else(|| "null".to_owned(), |n| n.to_string())
    }
    let status = serde_json::Value::from(words.name);
    format!(
        "{{\"status\": {status}, \"position\": {}, \"wait_seconds\": {}, \"retry_after\": {}, \
         \"starts_in\": {}, \"ends_in\": {}}}\n",
        number(f.position),
        number(f.wait_seconds),
        number(f.retry_after),
        number(f.starts_in),
        number(f.ends_in),
    )
}

/// The page's style: the system's fonts, one column that fits a phone, dark when the phone is.
const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d1d1f;--bg:#f5f5f7;--card:#fff;--muted:#6e6e73}\
@media (prefers-color-scheme:dark){:root{--fg:#f5f5f7;--bg:#1d1d1f;--card:#2c2c2e;--muted:#a1a1a6}}\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
padding:1.25rem;background:var(--bg);color:var(--fg);\
font:1.0625rem/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif}\
main{width:100%;max-width:30rem;background:var(--card);border-radius:1rem;padding:1.75rem 1.5rem;\
box-shadow:0 1px 3px rgba(0,0,0,.12)}\
h1{font-size:1.5rem;line-height:1.25;margin:0 0 .75rem}\
p{margin:0 0 1rem}\
dl{margin:1.25rem 0}\
dt{color:var(--muted);font-size:.9375rem}\
dd{margin:0 0 .75rem;font-size:1.25rem;font-weight:600;font-variant-numeric:tabular-nums}\
.note{font-size:.9375rem;color:var(--muted)}\
.status{margin:1.5rem 0 0;font:.75rem/1 ui-monospace,monospace;color:var(--muted);letter-spacing:.05em}";

/// A page for a browser: valid HTML5, its style inline, no script, no asset to fetch (the
/// empty icon spares a request through the gate per reload), everything in it escaped, and an
/// automatic refresh after `retry_after` (at most [`MAX_REFRESH`]) where it has one.
#[inline(never)]
fn html(words: &Words, f: &Figures) -> String {
    let mut page = String::with_capacity(2560);
    page.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    );
    let refresh = f.retry_after.map(|seconds| seconds.min(MAX_REFRESH));
    if let Some(seconds) = refresh {
        let _ = writeln!(page, "<meta http-equiv=\"refresh\" content=\"{seconds}\">");
    }
    page.push_str(
        "<meta name=\"robots\" content=\"noindex\">\n<link rel=\"icon\" href=\"data:,\">\n",
    );
    let _ = writeln!(page, "<title>{}</title>", Escaped(words.heading));
    let _ = writeln!(page, "<style>{STYLE}</style>\n</head>\n<body>\n<main>");
    let _ =
        writeln!(page, "<h1>{}</h1>\n<p>{}</p>", Escaped(words.heading), Escaped(words.sentence));
    let figures = [
        ("Buyers ahead of you", f.position.map(grouped)),
        ("Estimated wait", f.wait_seconds.map(|s| format!("about {}", duration(s)))),
        ("The sale starts in", f.starts_in.map(|s| duration(s.max(0) as u64))),
        ("The sale ends in", f.ends_in.map(|s| duration(s.max(0) as u64))),
    ];
    if figures.iter().any(|(_, value)| value.is_some()) {
        page.push_str("<dl>\n");
        for (term, value) in figures.iter().filter_map(|(t, v)| Some((t, v.as_ref()?))) {
            let _ = writeln!(page, "<dt>{}</dt><dd>{}</dd>", Escaped(term), Escaped(value));
        }
        page.push_str("</dl>\n");
    }
    if let Some(seconds) = refresh {
        let _ = writeln!(
            page,
            "<p class=\"note\">This page reloads by itself in {}.</p>",
            Escaped(&duration(seconds))
        );
    }
    let _ = writeln!(
        page,
        "<p class=\"status\">{}</p>\n</main>\n</body>\n</html>",
        Escaped(words.name)
    );
    page
}

/// Text put into HTML: `&`, `<`, `>`, `"` and `'` as character references, so it is text in
/// an element and in a quoted attribute alike.
struct Escaped<'a>(&'a str);

impl core::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// A duration in plain words, in its two largest units: `45 seconds`, `2 minutes 5 seconds`,
/// `1 hour`, `3 days 4 hours`, `26,329 days 13 hours`.
fn duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] =
        [(86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")];
    let Some(first) = UNITS.iter().position(|&(size, _)| seconds >= size) else {
        return "0 seconds".to_owned();
    };
    let mut words = Vec::with_capacity(2);
    let mut rest = seconds;
    for &(size, unit) in &UNITS[first..UNITS.len().min(first + 2)] {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            words.push(format!("{} {unit}{}", grouped(n), if n == 1 { "" } else { "s" }));
        }
    }
    words.join(" ")
}

/// A count with its thousands grouped: `12,345`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Representation::{Html, Json, Text};

    fn chosen(accept: &str) -> Representation {
        negotiate(Some(accept.as_bytes()))
    }

    #[test]
    fn without_a_preference_the_text_as_before() {
        assert_eq!(negotiate(None), Text);
        for accept in
            ["*/*", "", "text/plain", "text/plain, */*;q=0.5", "image/png", " , ,", "*/*;q=1"]
        {
            assert_eq!(chosen(accept), Text, "{accept:?}");
        }
        assert_eq!(negotiate(Some(b"text/html\xff")), Text, "not UTF-8");
    }

    #[test]
    fn browsers_get_the_page_and_programs_the_json() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                      image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let safari = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        for accept in [chrome, firefox, safari, "text/html", "TEXT/HTML", "text/*;q=0.5, text/html"]
        {
            assert_eq!(chosen(accept), Html, "{accept:?}");
        }
        for accept in ["application/json", "application/json, */*;q=0.1", "Application/JSON"] {
            assert_eq!(chosen(accept), Json, "{accept:?}");
        }
    }

    #[test]
    fn weights_decide_and_zero_refuses() {
        assert_eq!(chosen("text/html;q=0, application/json"), Json);
        assert_eq!(chosen("application/json;q=0.5, text/html"), Html);
        assert_eq!(chosen("application/json, text/html;q=0.9"), Json);
        assert_eq!(chosen("text/html ; q=0.3 , application/json ; q=0.2"), Html);
        assert_eq!(chosen("text/html;Q=0.5, application/json;q=0.4"), Html);
        assert_eq!(chosen("text/plain;q=0, text/html;q=0.001"), Html);
        assert_eq!(chosen("text/html;q=0.1, text/plain;q=0.2"), Text);
        // Nothing acceptable: the text, as before.
        assert_eq!(chosen("text/plain;q=0, text/html;q=0, application/json;q=0"), Text);
        assert_eq!(chosen("*/*;q=0"), Text);
        assert_eq!(chosen("text/html;q=0."), Text, "0. is zero");
    }

    #[test]
    fn the_most_specific_range_gives_the_weight() {
        // text/* says 0.9, but text/html says 0.1 for HTML itself; text/plain keeps 0.9.
        assert_eq!(chosen("text/html;q=0.1, text/*;q=0.9, application/json;q=0.5"), Text);
        assert_eq!(chosen("text/*;q=0.2, text/html;q=0.9, application/json;q=0.5"), Html);
        assert_eq!(chosen("*/*, text/plain;q=0, application/json;q=0"), Html);
        assert_eq!(chosen("*/*;q=0.5, application/*;q=0.9"), Json);
        assert_eq!(chosen("text/html;q=0, */*"), Text, "the tie of */* goes to the text");
        // A parameter the page has makes a more specific range; one it lacks does not match.
        assert_eq!(chosen("text/html;q=0.2, text/html;charset=UTF-8, text/plain;q=0.5"), Html);
        assert_eq!(chosen("text/html;charset=\"utf-8\""), Html);
        assert_eq!(chosen("text/html;level=1"), Text);
        assert_eq!(chosen("text/html;charset=iso-8859-1"), Text);
        assert_eq!(chosen("application/problem+json"), Text);
    }

    #[test]
    fn ties_go_to_the_text_then_the_json() {
        assert_eq!(chosen("text/html, text/plain"), Text);
        assert_eq!(chosen("application/json, text/plain"), Text);
        assert_eq!(chosen("application/json, text/plain, */*"), Text);
        assert_eq!(chosen("text/html, application/json"), Json);
        assert_eq!(chosen("*/*;q=0.1, text/plain;q=0"), Json);
    }

    #[test]
    fn members_that_are_not_ranges_are_skipped() {
        assert_eq!(chosen("text/html;q=2"), Text);
        assert_eq!(chosen("text/html;q=1.0001, application/json;q=0.1"), Json);
        assert_eq!(chosen("text/html;q=abc, application/json;q=0.1"), Json);
        assert_eq!(chosen("html, application/json;q=0.1"), Json);
        assert_eq!(chosen("*/html, application/json;q=0.1"), Json);
        assert_eq!(chosen(";;;, text/html"), Html);
        assert_eq!(chosen("text/html;q=\"0.5\", application/json;q=0.4"), Json);
    }

    #[test]
    fn qvalues() {
        for (s, q) in [("0", 0), ("0.", 0), ("0.5", 500), ("0.125", 125), ("0.05", 50), ("1", 1000)]
        {
            assert_eq!(qvalue(s), Some(q), "{s:?}");
        }
        assert_eq!(qvalue("1.000"), Some(1000));
        for bad in ["", ".5", "1.5", "2", "0.1234", "-0", "0.5x", "+1", "01", "1.0000", "0,5"] {
            assert_eq!(qvalue(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_outcome_has_its_words() {
        for outcome in Outcome::ALL {
            let words = Words::of(outcome);
            assert_eq!(words.name, outcome.as_str());
            assert_eq!(words.line, outcome.message());
            assert!(!words.heading.is_empty() && words.sentence.ends_with('.'), "{outcome}");
            assert_eq!(Words::from(outcome), words);
        }
    }

    #[test]
    fn figures_from_the_window() {
        let window = Window { start_ms: Some(10_000), end_ms: Some(3_610_000) };
        let before = Figures::of(Outcome::NotStarted, &window, 1_500);
        let expected = Figures {
            retry_after: Some(9),
            starts_in: Some(9),
            ends_in: Some(3_609),
            ..Figures::default()
        };
        assert_eq!(before, expected);
        assert_eq!(Figures::of(Outcome::Prequeued, &window, 1_500), expected);
        let during = Figures { ends_in: Some(1_800), ..Figures::default() };
        assert_eq!(Figures::of(Outcome::SoldOut, &window, 1_810_000), during);
        assert_eq!(Figures::of(Outcome::Blocked, &window, 1_810_000), during);
        assert_eq!(
            Figures::of(Outcome::Unavailable, &window, 1_810_000),
            Figures { retry_after: Some(UNAVAILABLE_RETRY_AFTER), ..during }
        );
        assert_eq!(Figures::of(Outcome::Ended, &window, 3_610_000), Figures::default());
        // A key problem before the start: no retry (asking again does not help), the times.
        assert_eq!(
            Figures::of(Outcome::NoKey, &window, 1_500),
            Figures { retry_after: None, ..expected }
        );
        assert_eq!(Figures::of(Outcome::SoldOut, &Window::default(), 0), Figures::default());
    }

    fn figures() -> Figures {
        Figures {
            position: Some(12_345),
            wait_seconds: Some(125),
            retry_after: Some(7),
            starts_in: Some(7),
            ends_in: Some(90_061),
        }
    }

    #[test]
    fn the_text_is_todays_line_and_nothing_is_copied() {
        for outcome in Outcome::ALL {
            let body = render(&outcome.into(), &figures(), Text);
            assert!(matches!(body, Cow::Borrowed(line) if line == outcome.message()));
        }
        assert_eq!(Text.content_type(), "text/plain");
        assert_eq!(Html.content_type(), "text/html; charset=utf-8");
        assert_eq!(Json.content_type(), "application/json");
    }

    #[test]
    fn json_has_exactly_the_keys_with_null_where_they_do_not_apply() {
        let sold_out = Figures { ends_in: Some(3600), ..Figures::default() };
        assert_eq!(
            render(&Outcome::SoldOut.into(), &sold_out, Json),
            "{\"status\": \"SOLD_OUT\", \"position\": null, \"wait_seconds\": null, \
             \"retry_after\": null, \"starts_in\": null, \"ends_in\": 3600}\n"
        );
        let body = render(&Outcome::NotStarted.into(), &figures(), Json);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"status": "NOT_STARTED", "position": 12345, "wait_seconds": 125,
                               "retry_after": 7, "starts_in": 7, "ends_in": 90061})
        );
        let odd = Words { name: "A\"B\\C", ..Words::of(Outcome::Blocked) };
        let value: serde_json::Value =
            serde_json::from_str(&render(&odd, &Figures::default(), Json)).unwrap();
        assert_eq!(value["status"], "A\"B\\C");
    }

    #[test]
    fn the_page_says_it_all_in_plain_words() {
        let page = render(&Outcome::NotStarted.into(), &figures(), Html);
        assert!(page.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
        assert!(page.contains("<meta charset=\"utf-8\">"));
        assert!(page
            .contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"7\">"));
        assert!(page.contains("<title>The sale has not started yet</title>"));
        assert!(page.contains("<h1>The sale has not started yet</h1>"));
        assert!(page.contains("<dt>Buyers ahead of you</dt><dd>12,345</dd>"));
        assert!(page.contains("<dt>Estimated wait</dt><dd>about 2 minutes 5 seconds</dd>"));
        assert!(page.contains("<dt>The sale starts in</dt><dd>7 seconds</dd>"));
        assert!(page.contains("<dt>The sale ends in</dt><dd>1 day 1 hour</dd>"));
        assert!(page.contains("This page reloads by itself in 7 seconds."));
        assert!(page.contains("<p class=\"status\">NOT_STARTED</p>"));
        // No script, nothing fetched from elsewhere.
        for absent in ["<script", "src=", "http:", "https:", "url(", "@import"] {
            assert!(!page.contains(absent), "{absent}");
        }
    }

    #[test]
    fn a_page_without_a_retry_does_not_refresh() {
        for outcome in [Outcome::SoldOut, Outcome::Ended, Outcome::Blocked, Outcome::NoKey] {
            let page = render(&outcome.into(), &Figures::of(outcome, &Window::default(), 0), Html);
            assert!(!page.contains("refresh"), "{outcome}");
            assert!(!page.contains("<dl>"), "{outcome}: no figures, no list");
            assert!(page.contains(Words::of(outcome).sentence));
        }
        let unavailable = Outcome::Unavailable;
        let page =
            render(&unavailable.into(), &Figures::of(unavailable, &Window::default(), 0), Html);
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }

    #[test]
    fn a_far_start_refreshes_within_a_browsers_timer() {
        let far = Figures { retry_after: Some(4_000_000_000), ..Figures::default() };
        let page = render(&Outcome::NotStarted.into(), &far, Html);
        assert!(page.contains(&format!("content=\"{MAX_REFRESH}\"")));
        let json = render(&Outcome::NotStarted.into(), &far, Json);
        assert!(json.contains("\"retry_after\": 4000000000"));
    }

    #[test]
    fn everything_in_the_page_is_escaped() {
        let evil = Words {
            name: "<b>&'\"",
            line: "x\n",
            heading: "<script>alert(1)</script>",
            sentence: "a \"quoted\" & 'single' <tag>",
        };
        let page = render(&evil, &Figures::default(), Html);
        assert!(!page.contains("<script>") && !page.contains("<b>") && !page.contains("<tag>"));
        assert!(page.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>"));
        assert!(page.contains("<p>a &quot;quoted&quot; &amp; &#39;single&#39; &lt;tag&gt;</p>"));
        assert!(page.contains("<p class=\"status\">&lt;b&gt;&amp;&#39;&quot;</p>"));
        assert_eq!(Escaped("plain").to_string(), "plain");
        assert_eq!(Escaped("").to_string(), "");
        assert_eq!(Escaped("é<").to_string(), "é&lt;");
    }

    #[test]
    fn durations_and_counts_in_plain_words() {
        let cases = [
            (0, "0 seconds"),
            (1, "1 second"),
            (45, "45 seconds"),
            (60, "1 minute"),
            (125, "2 minutes 5 seconds"),
            (3_600, "1 hour"),
            (3_660, "1 hour 1 minute"),
            (3_601, "1 hour"),
            (86_400, "1 day"),
            (273_600, "3 days 4 hours"),
            (2_274_872_715, "26,329 days 13 hours"),
        ];
        for (seconds, words) in cases {
            assert_eq!(duration(seconds), words);
        }
        for (n, text) in [(0, "0"), (999, "999"), (1_000, "1,000"), (12_345_678, "12,345,678")] {
            assert_eq!(grouped(n), text);
        }
    }
}
