//! Property tests: the parsers of directive values, admin API requests, tokens and `Accept`
//! headers take any input without panicking (a panic in a worker is a crash), and the ones that
//! round-trip do.

use crate::{api, page, parse, remote, sale::BlockRatio, token};
use proptest::prelude::*;

const SECRET: &[u8] = b"a secret of at least thirty-two bytes";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn directive_values_never_panic(s in ".{0,64}") {
        let _ = parse::rfc3339_ms(&s);
        let _ = parse::cap(&s);
        let _ = parse::reject_status(&s);
        let _ = parse::size(&s);
        let _ = parse::duration_ms(&s);
        let _ = parse::duration_or_zero_ms(&s);
        let _ = parse::log_level(&s);
        let _ = parse::lone_variable(&s);
        let _ = parse::zone_name_size(&s);
        let _ = BlockRatio::parse(&s);
    }

    #[test]
    fn redis_parameters_never_panic(params in proptest::collection::vec("[a-z_]{0,9}=?.{0,20}", 0..6)) {
        let _ = remote::Settings::parse(params.iter().map(String::as_str));
    }

    #[test]
    fn redis_replies_never_panic(code in any::<i64>(), permit in ".{0,30}") {
        let _ = remote::parse_admission(code, &permit);
    }

    #[test]
    fn api_requests_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = api::route(&body, &body, true);
        let _ = api::cursor_from(&body);
        let _ = api::page(&body);
        let _ = api::grants(&body);
        let _ = api::patch(&body);
        let _ = api::percent_decode(&body);
    }

    #[test]
    fn accept_headers_never_panic(accept in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = page::negotiate(Some(&accept));
    }

    #[test]
    fn accept_shaped_headers_never_panic(s in r#"[a-zA-Z*/;=., "0-9+\\-]{0,80}"#) {
        let _ = page::negotiate(Some(s.as_bytes()));
    }

    #[test]
    fn json_shaped_api_bodies_never_panic(s in r#"[\[\]{}",:0-9a-z\- .]{0,80}"#) {
        let _ = api::grants(s.as_bytes());
        let _ = api::patch(s.as_bytes());
    }

    #[test]
    fn times_round_trip(ms in -62_135_596_800_000i64..253_402_300_799_999) {
        prop_assert_eq!(parse::rfc3339_ms(&api::rfc3339(ms)), Some(ms));
    }

    #[test]
    fn ratios_in_range_parse_and_others_do_not(x in -2.0f64..3.0) {
        let text = format!("{x}");
        let parsed = BlockRatio::parse(&text);
        prop_assert_eq!(parsed.is_some(), (0.0..=1.0).contains(&x));
    }

    #[test]
    fn tokens_from_the_wire_never_panic(t in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = token::verify(SECRET, &t, "zone", b"key", None, 0);
    }

    #[test]
    fn tokens_round_trip_and_any_changed_byte_is_refused(
        zone in ".{1,16}", key in ".{1,40}", seq in 1u64.., flip in any::<prop::sample::Index>()
    ) {
        let claims = token::Claims { zone: &zone, key: &key, item: "", seq, expires_ms: None };
        let signed = token::sign(SECRET, &claims).unwrap_or_default();
        prop_assert_eq!(
            token::verify(SECRET, signed.as_bytes(), &zone, key.as_bytes(), None, 0),
            Ok((seq, None))
        );
        let mut tampered = signed.into_bytes();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x01;
        prop_assert!(token::verify(SECRET, &tampered, &zone, key.as_bytes(), None, 0).is_err());
    }

    #[test]
    fn percent_encoding_round_trips(key in proptest::collection::vec(any::<u8>(), 0..64)) {
        let encoded: String = key.iter().map(|b| format!("%{b:02X}")).collect();
        prop_assert_eq!(api::percent_decode(encoded.as_bytes()), Some(key));
    }
}

#[test]
fn deeply_nested_json_is_refused_not_overflowed() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(api::grants(deep.as_bytes()).unwrap_err().status, 400);
    assert_eq!(api::patch(deep.as_bytes()).unwrap_err().status, 400);
}
