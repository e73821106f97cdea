//! Parsers for directive values: dates, counts, statuses and zone sizes.
//!
//! Pure functions over `&str`, so that every value `nginx -t` can be given is unit-tested here
//! and the glue only maps `None` to an error message.

/// Parses an RFC 3339 timestamp (`2021-08-08T00:00:00Z`, `2021-08-08T08:00:00+08:00`, with an
/// optional fraction of a second) into Unix milliseconds.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't') {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut rest = &b[19..];
    let mut millis = 0;
    if let Some((b'.', frac)) = rest.split_first() {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Milliseconds are the clock's resolution; further digits are accepted and dropped.
        for (i, d) in frac[..len.min(3)].iter().enumerate() {
            millis += i64::from(d - b'0') * [100, 10, 1][i];
        }
        rest = &frac[len..];
    }

    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let minutes = oh * 60 + om;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Parses a permit cap: a whole number of permits, 0 or more.
pub fn cap(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a rejection status: 400 to 599, as `limit_req_status` accepts.
pub fn reject_status(s: &str) -> Option<u16> {
    let status: u16 = s.parse().ok().filter(|_| s.bytes().all(|c| c.is_ascii_digit()))?;
    (400..=599).contains(&status).then_some(status)
}

/// Parses a time exactly as nginx parses its millisecond settings (`send_timeout`,
/// `proxy_read_timeout`, ...): `ngx_parse_time(line, 0)` in nginx's src/core/ngx_parse.c.
/// Units `w`, `d`, `h`, `m`, `s`, `ms`, each at most once and from the largest down
/// (`1h30m`, `"1h 30m"`, `1w`, `500ms`); a bare number is seconds; spaces may follow a unit,
/// and a space after a bare number makes it seconds. Returns milliseconds, 0 or more; `None`
/// for anything nginx refuses, an overflow included.
///
/// Written here rather than calling nginx's function because the pure layers (the admin API's
/// `ttl`, the Redis settings) parse times in `cargo test`, where nginx's C code is not linked;
/// t/time.t holds it to nginx's own parser value by value.
pub fn time_ms(s: &str) -> Option<i64> {
    // The unit steps in nginx's order; a unit may only follow a larger one.
    #[derive(Clone, Copy, PartialEq, PartialOrd)]
    enum Step {
        // nginx starts millisecond times here, so that years and months (`y`, `M`) are refused.
        Month,
        Week,
        Day,
        Hour,
        Min,
        Sec,
        Msec,
        Last,
    }
    let mut step = Step::Month;
    let (mut value, mut total, mut valid) = (0i64, 0i64, false);
    let mut bytes = s.as_bytes().iter().peekable();
    while let Some(&c) = bytes.next() {
        if c.is_ascii_digit() {
            value = value.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
            valid = true;
            continue;
        }
        let (next, scale) = match c {
            b'w' => (Step::Week, 7 * 86_400_000),
            b'd' => (Step::Day, 86_400_000),
            b'h' => (Step::Hour, 3_600_000),
            b'm' if bytes.peek() == Some(&&b's') => {
                bytes.next();
                (Step::Msec, 1)
            }
            b'm' => (Step::Min, 60_000),
            b's' => (Step::Sec, 1_000),
            // A space ends a bare number of seconds; nothing may follow but another number.
            b' ' if step < Step::Sec => (Step::Last, 1_000),
            _ => return None,
        };
        if next <= step {
            return None;
        }
        step = next;
        total = total.checked_add(value.checked_mul(scale)?)?;
        value = 0;
        while bytes.peek() == Some(&&b' ') {
            bytes.next();
        }
    }
    if !valid {
        return None;
    }
    total.checked_add(value.checked_mul(1_000)?)
}

/// A time as [`time_ms`] reads it, for settings where zero would mean nothing: more than 0 ms.
pub fn duration_ms(s: &str) -> Option<i64> {
    time_ms(s).filter(|&ms| ms > 0)
}

/// As [`time_ms`]: no time at all (`0`, `0s`, `0ms` ...) is allowed, for settings where zero
/// means "never wait" or "never keep".
pub fn duration_or_zero_ms(s: &str) -> Option<i64> {
    time_ms(s)
}

/// Parses the arguments of `flash_sale_draw`: `per_request`, or `per_key [interval]`.
/// Errors: the word that is wrong, so that `nginx -t` can quote it.
pub fn draw_mode<'a>(args: &[&'a str]) -> Result<crate::sale::DrawMode, &'a str> {
    use crate::sale::DrawMode;
    match *args {
        ["per_request"] => Ok(DrawMode::PerRequest),
        ["per_key"] => Ok(DrawMode::PerKey { interval_ms: None }),
        ["per_key", interval] => {
            let interval_ms = duration_ms(interval).ok_or(interval)?;
            Ok(DrawMode::PerKey { interval_ms: Some(interval_ms) })
        }
        ["per_request", extra, ..] | ["per_key", _, extra, ..] => Err(extra),
        [mode, ..] => Err(mode),
        [] => Err(""),
    }
}

/// Parses a rate as `limit_req_zone` takes it, `20r/s` or `600r/m`, into thousandths of a
/// request per second, rounded down as nginx rounds it (`1r/m` is 16); zero is refused.
pub fn rate(s: &str) -> Option<crate::line::Rate> {
    let (digits, per) = match (s.strip_suffix("r/s"), s.strip_suffix("r/m")) {
        (Some(digits), _) => (digits, 1),
        (_, Some(digits)) => (digits, 60),
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    crate::line::Rate::from_milli(n.checked_mul(1000)? / per)
}

/// Parses the arguments of `flash_sale_queue`: `rate=RATE [idle=TIME] [refresh=TIME]`, in any
/// order, or `off` (`None`). Errors: the word that is wrong (empty when `rate=` is missing),
/// so that `nginx -t` can quote it.
pub fn queue<'a>(args: &[&'a str]) -> Result<Option<crate::line::Queue>, &'a str> {
    use crate::line::{Queue, DEFAULT_IDLE_MS, DEFAULT_REFRESH_MS};
    if let ["off"] = args {
        return Ok(None);
    }
    let (mut rate, mut idle_ms, mut refresh_ms) = (None, None, None);
    for &arg in args {
        match arg.split_once('=') {
            Some(("rate", value)) if rate.is_none() => rate = Some(self::rate(value).ok_or(arg)?),
            Some(("idle", value)) if idle_ms.is_none() => {
                idle_ms = Some(duration_ms(value).ok_or(arg)?)
            }
            Some(("refresh", value)) if refresh_ms.is_none() => {
                refresh_ms = Some(duration_ms(value).ok_or(arg)?)
            }
            _ => return Err(arg),
        }
    }
    Ok(Some(Queue {
        rate: rate.ok_or("")?,
        idle_ms: idle_ms.unwrap_or(DEFAULT_IDLE_MS),
        refresh_ms: refresh_ms.unwrap_or(DEFAULT_REFRESH_MS),
    }))
}

/// Whether a line's waiter who waits the longest `Retry-After` he can be given (`refresh` and
/// a fifth: see `Queue::retry_after`) is back before `idle` makes him leave, with a second to
/// spare.
pub fn refresh_fits_idle(queue: &crate::line::Queue) -> bool {
    let longest_ms = queue.retry_after(u64::MAX, 1.0).saturating_mul(1000);
    (longest_ms as i64).saturating_add(1_000) < queue.idle_ms
}

/// Parses `on` or `off`.
pub fn flag(s: &str) -> Option<bool> {
    match s {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// Whether `s` is a plain header name (letters, digits and dashes).
pub fn header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

/// Parses a log level name as `limit_req_log_level` takes it; nginx's numbering.
pub fn log_level(s: &str) -> Option<usize> {
    match s {
        "error" => Some(4),
        "warn" => Some(5),
        "notice" => Some(6),
        "info" => Some(7),
        _ => None,
    }
}

/// Parses a size as nginx writes it: bytes, or a number followed by `k`/`K` or `m`/`M`.
pub fn size(s: &str) -> Option<usize> {
    let (number, scale) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    if number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    number.parse::<usize>().ok()?.checked_mul(scale)
}

/// The name of the variable when a key is one variable alone (`$http_authorization`), which
/// can be read directly instead of through nginx's script engine.
pub fn lone_variable(key: &str) -> Option<&str> {
    let name = key.strip_prefix('$')?;
    let valid = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    valid.then_some(name)
}

/// Splits a `zone=NAME:SIZE` value (without the `zone=` prefix) into its name and size text.
pub fn zone_name_size(s: &str) -> Option<(&str, &str)> {
    let (name, size) = s.split_once(':')?;
    (!name.is_empty()).then_some((name, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc_and_offsets() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("2021-08-08T00:00:00Z"), Some(1_628_380_800_000));
        assert_eq!(rfc3339_ms("2021-08-08T00:00:00+00:00"), Some(1_628_380_800_000));
        assert_eq!(rfc3339_ms("2021-08-08T08:00:00+08:00"), Some(1_628_380_800_000));
        assert_eq!(rfc3339_ms("2021-08-07T19:30:00-04:30"), Some(1_628_380_800_000));
        assert_eq!(rfc3339_ms("2021-08-08t00:00:00z"), Some(1_628_380_800_000));
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59Z"), Some(-1_000));
    }

    #[test]
    fn rfc3339_fractions_are_kept_to_the_millisecond() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.25Z"), Some(1_250));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.123456Z"), Some(1_123));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00.001+00:00"), Some(1));
    }

    #[test]
    fn rfc3339_calendar_is_checked() {
        assert!(rfc3339_ms("2024-02-29T00:00:00Z").is_some());
        assert!(rfc3339_ms("2000-02-29T00:00:00Z").is_some());
        for bad in [
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2021-04-31T00:00:00Z",
            "2021-13-01T00:00:00Z",
            "2021-00-01T00:00:00Z",
            "2021-08-00T00:00:00Z",
            "2021-08-08T24:00:00Z",
            "2021-08-08T23:60:00Z",
            "2021-08-08T23:59:60Z",
            "2021-08-08T00:00:00+24:00",
            "2021-08-08T00:00:00+01:60",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad} must be refused");
        }
    }

    #[test]
    fn rfc3339_syntax_is_strict() {
        for bad in [
            "",
            "2021-08-08",
            "2021-08-08T00:00:00",
            "2021-08-08 00:00:00Z",
            "2021-08-08T00:00Z",
            "2021-8-08T00:00:00Z",
            "2021-08-08T00:00:00.Z",
            "2021-08-08T00:00:00+0100",
            "2021-08-08T00:00:00+01",
            "2021-08-08T00:00:00ZZ",
            "２021-08-08T00:00:00Z",
            "+021-08-08T00:00:00Z",
            "yesterday at noon, UTC",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 59, 365, 11_016, 18_847, 19_417, 47_482] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(18_847), (2021, 8, 8));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn caps() {
        assert_eq!(cap("0"), Some(0));
        assert_eq!(cap("3"), Some(3));
        assert_eq!(cap("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+3", "3.0", "three", "18446744073709551616", " 3"] {
            assert_eq!(cap(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn reject_statuses() {
        assert_eq!(reject_status("503"), Some(503));
        assert_eq!(reject_status("400"), Some(400));
        assert_eq!(reject_status("599"), Some(599));
        for bad in ["399", "600", "200", "", "+503", "5o3", "-503"] {
            assert_eq!(reject_status(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("10m"), Some(600_000));
        assert_eq!(duration_ms("30s"), Some(30_000));
        assert_eq!(duration_ms("45"), Some(45_000));
        assert_eq!(duration_ms("2h"), Some(7_200_000));
        assert_eq!(duration_ms("1d"), Some(86_400_000));
        assert_eq!(duration_ms("250ms"), Some(250));
        for zero in ["0", "0s", "0ms", "00m"] {
            assert_eq!(duration_or_zero_ms(zero), Some(0), "{zero:?}");
        }
        assert_eq!(duration_or_zero_ms("2s"), Some(2_000));
        for bad in ["", "s", "-0", "0x", "0 s"] {
            assert_eq!(duration_or_zero_ms(bad), None, "{bad:?}");
        }
        for bad in ["", "0", "0s", "-1m", "10x", "m", "1.5m", "10 m", "99999999999999999999d"] {
            assert_eq!(duration_ms(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn times_as_nginx_reads_them() {
        for (text, ms) in [
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("1h   30m 15s", 5_415_000),
            ("1w", 604_800_000),
            ("1w2d", 777_600_000),
            ("500ms", 500),
            ("1s500ms", 1_500),
            ("1m 30s", 90_000),
            ("90", 90_000),
            ("1h5", 3_605_000),
            ("5 ", 5_000),
            ("1 2", 3_000),
            ("0", 0),
            ("9223372036854775ms", 9_223_372_036_854_775),
            ("15250284452w", 15_250_284_452 * 604_800_000),
            ("9223372036854775807ms", i64::MAX),
        ] {
            assert_eq!(time_ms(text), Some(ms), "{text:?}");
        }
        for bad in [
            "",
            " ",
            "h",
            "1y",
            "1M",
            "30m1h",
            "1h1h",
            "1ms1s",
            "1s 2 ",
            "1 s",
            "1.5h",
            "-1s",
            "+1s",
            "1H",
            "1h\t30m",
            "1 2 3",
            "9223372036854775808ms",
            "9223372036854776",
            "15250284453w",
            "9223372036854775807ms1ms",
        ] {
            assert_eq!(time_ms(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn draw_modes() {
        use crate::sale::DrawMode;
        assert_eq!(draw_mode(&["per_request"]), Ok(DrawMode::PerRequest));
        assert_eq!(draw_mode(&["per_key"]), Ok(DrawMode::PerKey { interval_ms: None }));
        assert_eq!(
            draw_mode(&["per_key", "30s"]),
            Ok(DrawMode::PerKey { interval_ms: Some(30_000) })
        );
        assert_eq!(
            draw_mode(&["per_key", "1m 30s"]),
            Ok(DrawMode::PerKey { interval_ms: Some(90_000) })
        );
        for (bad, word) in [
            (&["per_key", "0s"][..], "0s"),
            (&["per_request", "30s"], "30s"),
            (&["per_ip"], "per_ip"),
            (&["per_key", "soon"], "soon"),
            (&["per_key", "1m", "30s"], "30s"),
        ] {
            assert_eq!(draw_mode(bad), Err(word), "{bad:?}");
        }
    }

    #[test]
    fn flags_and_header_names() {
        assert_eq!((flag("on"), flag("off"), flag("yes")), (Some(true), Some(false), None));
        assert!(header_name("X-Flash-Sale-Release"));
        assert!(!header_name("") && !header_name("X Sale") && !header_name("X:Sale"));
    }

    #[test]
    fn log_levels() {
        assert_eq!(log_level("info"), Some(7));
        assert_eq!(log_level("error"), Some(4));
        assert_eq!(log_level("debug"), None);
        assert_eq!(log_level("ERROR"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(size("10m"), Some(10 * 1024 * 1024));
        assert_eq!(size("64K"), Some(64 * 1024));
        assert_eq!(size("32768"), Some(32_768));
        for bad in ["", "m", "10g", "-1m", "1.5m", "10 m", "99999999999999999999999m"] {
            assert_eq!(size(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn lone_variables() {
        assert_eq!(lone_variable("$http_authorization"), Some("http_authorization"));
        assert_eq!(lone_variable("$arg_user"), Some("arg_user"));
        for complex in ["$arg_shop:$cookie_uid", "${arg_user}", "user", "$", "$a-b", "$a$b"] {
            assert_eq!(lone_variable(complex), None, "{complex:?} is not a lone variable");
        }
    }

    #[test]
    fn zone_names_and_sizes() {
        assert_eq!(zone_name_size("laptop:10m"), Some(("laptop", "10m")));
        assert_eq!(zone_name_size("laptop:"), Some(("laptop", "")));
        assert_eq!(zone_name_size("laptop"), None);
        assert_eq!(zone_name_size(":10m"), None);
    }

    #[test]
    fn rates_as_limit_req_reads_them() {
        assert_eq!(rate("20r/s").map(|r| r.milli()), Some(20_000));
        assert_eq!(rate("600r/m").map(|r| r.milli()), Some(10_000));
        assert_eq!(rate("1r/m").map(|r| r.milli()), Some(16), "nginx's rounding");
        for bad in [
            "0r/s",
            "r/s",
            "20",
            "20r/h",
            "-1r/s",
            "2.5r/s",
            " 20r/s",
            "20r/S",
            "99999999999999999999r/s",
        ] {
            assert_eq!(rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn queue_settings_in_any_order_or_off() {
        use crate::line::Queue;
        let q = queue(&["refresh=5s", "rate=10r/s", "idle=2m"]).unwrap().unwrap();
        assert_eq!(q, Queue { rate: rate("10r/s").unwrap(), idle_ms: 120_000, refresh_ms: 5_000 });
        let q = queue(&["rate=600r/m"]).unwrap().unwrap();
        assert_eq!((q.idle_ms, q.refresh_ms), (60_000, 20_000));
        assert_eq!(queue(&["off"]), Ok(None));
        assert_eq!(queue(&["idle=1m"]), Err(""), "rate= is required");
        assert_eq!(queue(&["rate=10r/s", "rate=5r/s"]), Err("rate=5r/s"));
        assert_eq!(queue(&["rate=10r/s", "idle=0s"]), Err("idle=0s"));
        assert_eq!(queue(&["rate=10r/s", "off"]), Err("off"));
        assert_eq!(queue(&["rate=10r/s", "burst=5"]), Err("burst=5"));
    }

    #[test]
    fn a_waiters_longest_retry_after_must_come_before_idle() {
        let fits = |args: &[&str]| refresh_fits_idle(&queue(args).unwrap().unwrap());
        assert!(fits(&["rate=1r/s"]), "the defaults: 24 s and a second before a minute");
        assert!(fits(&["rate=1r/s", "idle=3s", "refresh=1s"]));
        assert!(!fits(&["rate=1r/s", "idle=10s", "refresh=10s"]), "12 s is past 10");
        assert!(!fits(&["rate=1r/s", "refresh=1m"]), "72 s is past the default minute");
        assert!(fits(&["rate=1r/s", "idle=2m", "refresh=1m"]));
        // The edge: refresh=10s gives at most 12 s, and a second to spare makes 13.
        assert!(!fits(&["rate=1r/s", "idle=13s", "refresh=10s"]));
        assert!(fits(&["rate=1r/s", "idle=13001ms", "refresh=10s"]));
    }
}
