//! Signed permits: a JSON Web Token (RFC 7519) signed with HMAC-SHA256 (`HS256`), so that a
//! checkout, on this host or another with the same secret, can check who won without asking
//! the zone. Plain Rust: the glue reads the secret, the key and the clock, this signs and checks.
//!
//! The claims are `zone` (the zone's name), `sub` (the buyer's key), `seq` (the permit's number),
//! in a zone that sells several items `item` (the permit's item), and, for a permit that
//! expires, `exp` (Unix seconds, rounded down so that the token never outlives the permit).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::page::Words;

/// The shortest secret accepted: HMAC-SHA256's own output size, as RFC 7518 asks for HS256.
pub const MIN_SECRET_LEN: usize = 32;

/// `{"alg":"HS256","typ":"JWT"}`, encoded. Tokens with any other header are refused, so no
/// `"alg":"none"` or algorithm confusion can get through.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Why a token was refused; the names are what the 403 answer and the log say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request carries no token.
    Missing,
    /// Not a token of ours: malformed, another algorithm, or a signature that does not match.
    Invalid,
    /// The permit it stands for has expired.
    Expired,
    /// Signed for another zone (another sale).
    OtherZone,
    /// Signed for another buyer.
    OtherKey,
    /// Signed for another item of the sale (or for none, where the checkout names one).
    OtherItem,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "TOKEN_MISSING",
            Refusal::Invalid => "TOKEN_INVALID",
            Refusal::Expired => "TOKEN_EXPIRED",
            Refusal::OtherZone => "TOKEN_OTHER_ZONE",
            Refusal::OtherKey => "TOKEN_OTHER_KEY",
            Refusal::OtherItem => "TOKEN_OTHER_ITEM",
        }
    }

    /// The one-line body of the 403 answer.
    pub const fn message(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "TOKEN_MISSING: this page needs the token of a flash-sale permit.\n"
            }
            Refusal::Invalid => "TOKEN_INVALID: the token is not a valid flash-sale permit.\n",
            Refusal::Expired => "TOKEN_EXPIRED: the permit has expired.\n",
            Refusal::OtherZone => "TOKEN_OTHER_ZONE: the token is for another sale.\n",
            Refusal::OtherKey => "TOKEN_OTHER_KEY: the token is for another buyer.\n",
            Refusal::OtherItem => "TOKEN_OTHER_ITEM: the token is for another item.\n",
        }
    }

    /// What the 403 answer says, in every representation (see [`crate::page`]).
    pub const fn words(self) -> Words {
        let sentence = match self {
            Refusal::Missing => {
                "This page is for buyers who won a place in the sale, and this request carries \
                 no permit. Open it from the shop's page after winning."
            }
            Refusal::Invalid => "The permit this request carries is not valid for this sale.",
            Refusal::Expired => "The permit this request carries has expired.",
            Refusal::OtherZone => "The permit this request carries is for another sale.",
            Refusal::OtherKey => "The permit this request carries belongs to another buyer.",
            Refusal::OtherItem => "The permit this request carries is for another item.",
        };
        Words {
            name: self.as_str(),
            line: self.message(),
            heading: "This page needs a sale permit",
            sentence,
        }
    }
}

/// A permit as a token states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims<'a> {
    pub zone: &'a str,
    pub key: &'a str,
    /// The permit's item; empty in a zone that sells one item, and then not in the token.
    pub item: &'a str,
    pub seq: u64,
    pub expires_ms: Option<i64>,
}

/// The secret kept in a file: its bytes without a trailing line break (so that both
/// `openssl rand 32 > file` and `openssl rand -hex 32 > file` work), at least
/// [`MIN_SECRET_LEN`] of them. The error says how many there were.
pub fn secret_from_file(contents: &[u8]) -> Result<&[u8], usize> {
    let secret = contents.strip_suffix(b"\n").unwrap_or(contents);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    if secret.len() < MIN_SECRET_LEN {
        return Err(secret.len());
    }
    Ok(secret)
}

/// HMAC-SHA256 keyed with `secret`; HMAC takes keys of any length, so this fails only where
/// the library's types say it might.
fn mac(secret: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()
}

/// The token for a permit.
pub fn sign(secret: &[u8], claims: &Claims<'_>) -> Option<String> {
    let mut payload = format!(
        "{{\"zone\":{},\"sub\":{},\"seq\":{}",
        Value::from(claims.zone),
        Value::from(claims.key),
        claims.seq
    );
    if !claims.item.is_empty() {
        payload += &format!(",\"item\":{}", Value::from(claims.item));
    }
    if let Some(ms) = claims.expires_ms {
        payload += &format!(",\"exp\":{}", ms.div_euclid(1000));
    }
    payload.push('}');
    let mut token = format!("{HEADER}.{}", BASE64URL.encode(payload));
    let mut mac = mac(secret)?;
    mac.update(token.as_bytes());
    let signature = BASE64URL.encode(mac.finalize().into_bytes());
    token.push('.');
    token.push_str(&signature);
    Some(token)
}

/// Checks a token for the zone `zone` and the buyer `key` at `now_ms`, and, when `item` is
/// given, for that item; returns the permit's number and expiry. The signature is checked first (in constant time), so nothing an
/// attacker wrote is read before it is known to be ours.
pub fn verify(
    secret: &[u8],
    token: &[u8],
    zone: &str,
    key: &[u8],
    item: Option<&[u8]>,
    now_ms: i64,
) -> Result<(u64, Option<i64>), Refusal> {
    if token.is_empty() {
        return Err(Refusal::Missing);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Invalid);
    };
    if header != HEADER.as_bytes() {
        return Err(Refusal::Invalid);
    }
    let signature = BASE64URL.decode(signature).map_err(|_| Refusal::Invalid)?;
    let mut mac = mac(secret).ok_or(Refusal::Invalid)?;
    mac.update(&token[..header.len() + 1 + payload.len()]);
    mac.verify_slice(&signature).map_err(|_| Refusal::Invalid)?;

    let payload = BASE64URL.decode(payload).map_err(|_| Refusal::Invalid)?;
    let claims: Value = serde_json::from_slice(&payload).map_err(|_| Refusal::Invalid)?;
    let (Some(claimed_zone), Some(sub), Some(seq)) =
        (claims["zone"].as_str(), claims["sub"].as_str(), claims["seq"].as_u64())
    else {
        return Err(Refusal::Invalid);
    };
    let expires_ms = match &claims["exp"] {
        Value::Null => None,
        exp => Some(exp.as_i64().ok_or(Refusal::Invalid)?.saturating_mul(1000)),
    };
    // RFC 7519: the token must not be accepted on or after its expiry.
    if expires_ms.is_some_and(|exp| now_ms >= exp) {
        return Err(Refusal::Expired);
    }
    if claimed_zone != zone {
        return Err(Refusal::OtherZone);
    }
    if sub.as_bytes() != key {
        return Err(Refusal::OtherKey);
    }
    let claimed_item = match &claims["item"] {
        Value::Null => "",
        claimed => claimed.as_str().ok_or(Refusal::Invalid)?,
    };
    if item.is_some_and(|item| item != claimed_item.as_bytes()) {
        return Err(Refusal::OtherItem);
    }
    Ok((seq, expires_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ALICE: Claims<'static> = Claims {
        zone: "laptop",
        key: "alice",
        item: "",
        seq: 7,
        expires_ms: Some(1_700_000_000_999),
    };

    fn payload(token: &str) -> Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&BASE64URL.decode(part).unwrap()).unwrap()
    }

    /// A token with the payload and signing secret of our choice, as a forger would make one.
    fn forge(secret: &[u8], header: &str, payload: &str) -> String {
        let unsigned = format!("{}.{}", header, BASE64URL.encode(payload));
        let mut mac = mac(secret).unwrap();
        mac.update(unsigned.as_bytes());
        format!("{unsigned}.{}", BASE64URL.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn every_refusal_has_its_words() {
        for refusal in [
            Refusal::Missing,
            Refusal::Invalid,
            Refusal::Expired,
            Refusal::OtherZone,
            Refusal::OtherKey,
        ] {
            let words = refusal.words();
            assert_eq!((words.name, words.line), (refusal.as_str(), refusal.message()));
            assert!(words.sentence.ends_with('.'));
        }
    }

    #[test]
    fn a_token_states_the_permit_and_verifies() {
        let token = sign(SECRET, &ALICE).unwrap();
        assert!(token.starts_with(HEADER));
        assert_eq!(
            payload(&token),
            serde_json::json!({"zone": "laptop", "sub": "alice", "seq": 7, "exp": 1_700_000_000})
        );
        let now = 1_699_999_999_000;
        assert_eq!(
            verify(SECRET, token.as_bytes(), "laptop", b"alice", None, now),
            Ok((7, Some(1_700_000_000_000)))
        );
    }

    #[test]
    fn a_permit_without_expiry_gives_a_token_without_exp() {
        let forever = Claims { expires_ms: None, ..ALICE };
        let token = sign(SECRET, &forever).unwrap();
        assert_eq!(payload(&token).get("exp"), None);
        assert_eq!(
            verify(SECRET, token.as_bytes(), "laptop", b"alice", None, i64::MAX),
            Ok((7, None))
        );
    }

    #[test]
    fn keys_are_json_escaped() {
        let odd = Claims { key: "a\"b\\c\n\u{e9}", ..ALICE };
        let token = sign(SECRET, &odd).unwrap();
        assert_eq!(payload(&token)["sub"], "a\"b\\c\n\u{e9}");
        assert!(verify(SECRET, token.as_bytes(), "laptop", odd.key.as_bytes(), None, 0).is_ok());
    }

    #[test]
    fn each_kind_of_bad_token_is_refused_for_its_reason() {
        let token = sign(SECRET, &ALICE).unwrap();
        let now = 1_600_000_000_000;
        let check = |t: &str, zone: &str, key: &[u8], now: i64| {
            verify(SECRET, t.as_bytes(), zone, key, None, now).map(|_| ())
        };
        assert_eq!(check("", "laptop", b"alice", now), Err(Refusal::Missing));
        assert_eq!(check(&token, "phone", b"alice", now), Err(Refusal::OtherZone));
        assert_eq!(check(&token, "laptop", b"bob", now), Err(Refusal::OtherKey));
        assert_eq!(check(&token, "laptop", b"alice", 1_700_000_000_000), Err(Refusal::Expired));
        let other_secret = sign(b"another secret of thirty-two bytes", &ALICE).unwrap();
        assert_eq!(check(&other_secret, "laptop", b"alice", now), Err(Refusal::Invalid));
        // A payload changed after signing (bob's name on alice's signature).
        let parts: Vec<&str> = token.split('.').collect();
        let bob = BASE64URL.encode(r#"{"zone":"laptop","sub":"bob","seq":7}"#);
        let swapped = format!("{}.{}.{}", parts[0], bob, parts[2]);
        assert_eq!(check(&swapped, "laptop", b"bob", now), Err(Refusal::Invalid));
        // "alg": "none", unsigned; and a correctly signed token with another header.
        let none = BASE64URL.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none}.{bob}.");
        assert_eq!(check(&unsigned, "laptop", b"bob", now), Err(Refusal::Invalid));
        let payload = r#"{"zone":"laptop","sub":"bob","seq":1}"#;
        let spaced = forge(SECRET, &BASE64URL.encode(r#"{"alg": "HS256"}"#), payload);
        assert_eq!(check(&spaced, "laptop", b"bob", now), Err(Refusal::Invalid));
        for garbage in ["x", "a.b", "a.b.c.d", &format!("{HEADER}.!!!.{}", parts[2]), &token[1..]] {
            assert_eq!(check(garbage, "laptop", b"alice", now), Err(Refusal::Invalid), "{garbage}");
        }
    }

    #[test]
    fn signed_tokens_with_bad_claims_are_invalid() {
        for payload in [
            r#"{"zone":"laptop","sub":"alice"}"#,
            r#"{"zone":"laptop","sub":"alice","seq":-1}"#,
            r#"{"zone":"laptop","sub":"alice","seq":1,"exp":"soon"}"#,
            r#"{"zone":"laptop","sub":7,"seq":1}"#,
            r#"not json"#,
        ] {
            let t = forge(SECRET, HEADER, payload);
            assert_eq!(
                verify(SECRET, t.as_bytes(), "laptop", b"alice", None, 0),
                Err(Refusal::Invalid)
            );
        }
        let fine = forge(SECRET, HEADER, r#"{"seq":3,"sub":"alice","zone":"laptop","x":[]}"#);
        assert_eq!(verify(SECRET, fine.as_bytes(), "laptop", b"alice", None, 0), Ok((3, None)));
    }

    #[test]
    fn secrets_from_files() {
        let hex = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        assert_eq!(secret_from_file(hex), Ok(&hex[..64]));
        assert_eq!(secret_from_file(b"short\r\n"), Err(5));
        assert_eq!(secret_from_file(&[0u8; 32]), Ok(&[0u8; 32][..]));
        assert_eq!(secret_from_file(b""), Err(0));
    }

    #[test]
    fn a_token_names_its_item_and_a_checkout_can_require_it() {
        let size_42 = Claims { item: "red-42", ..ALICE };
        let token = sign(SECRET, &size_42).unwrap();
        assert_eq!(payload(&token)["item"], "red-42");
        let check =
            |item: Option<&[u8]>| verify(SECRET, token.as_bytes(), "laptop", b"alice", item, 0);
        assert_eq!(check(Some(b"red-42")).map(|(seq, _)| seq), Ok(7));
        assert_eq!(check(Some(b"red-43")), Err(Refusal::OtherItem));
        assert!(check(None).is_ok(), "a checkout that names no item takes any");
        let no_item = sign(SECRET, &ALICE).unwrap();
        assert_eq!(payload(&no_item).get("item"), None);
        assert_eq!(
            verify(SECRET, no_item.as_bytes(), "laptop", b"alice", Some(b"red-42"), 0),
            Err(Refusal::OtherItem)
        );
    }
}
