//! Stripe's webhook signature, checked as Stripe signs: the header
//! `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=…]`, the key the whole
//! `whsec_…` secret, the message `<t>.<raw body>`. Any `v1` that matches passes (Stripe
//! sends several while a secret is being rolled); the MAC is compared in constant time
//! by the `hmac` crate; the timestamp must be within the tolerance of now, either way.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Why a signature is refused (logged; the client gets one answer for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the header is not t=…,v1=…")]
    Malformed,
    #[error("the timestamp is outside the tolerance")]
    Stale,
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Longest header read (a few signatures and a timestamp).
const MAX_HEADER: usize = 1024;

/// Checks `header` over `body` with `secret`, at `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &[u8],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_HEADER {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match name {
            "t" => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            _ => {} // v0 (test mode's old scheme) and future schemes are ignored
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // Every candidate is checked (no early exit that would time which one matched).
    let matched = signatures.iter().fold(false, |ok, s| mac.clone().verify_slice(s).is_ok() | ok);
    if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// The header Stripe would send for `body` at `t`: for tests and the local stand-in.
pub fn sign(body: &[u8], secret: &[u8], t: i64) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_signature_made_as_stripe_makes_it_passes_and_any_v1_may_match() {
        let header = sign(BODY, SECRET, NOW);
        assert_eq!(verify(Some(&header), BODY, SECRET, 300, NOW), Ok(()));
        let other = sign(BODY, b"whsec_rolled_out", NOW);
        let v1 = header.split_once(",v1=").unwrap().1;
        let both = format!("{other},v1={v1}");
        assert_eq!(verify(Some(&both), BODY, SECRET, 300, NOW), Ok(()));
        let with_v0 = format!("{header},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39");
        assert_eq!(verify(Some(&with_v0), BODY, SECRET, 300, NOW), Ok(()));
    }

    #[test]
    fn missing_malformed_wrong_altered_stale_and_future_signatures_are_refused() {
        let header = sign(BODY, SECRET, NOW);
        assert_eq!(verify(None, BODY, SECRET, 300, NOW), Err(SignatureError::Missing));
        for malformed in
            ["", "t=abc,v1=00", "v1=00", &format!("t={NOW}"), &format!("t={NOW},v1=zz"), "garbage"]
        {
            assert_eq!(
                verify(Some(malformed), BODY, SECRET, 300, NOW),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
        assert_eq!(verify(Some(&header), BODY, b"whsec_other", 300, NOW), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(Some(&header), b"{\"id\":\"evt_2\"}", SECRET, 300, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(Some(&header), BODY, SECRET, 300, NOW + 301), Err(SignatureError::Stale));
        assert_eq!(verify(Some(&header), BODY, SECRET, 300, NOW - 301), Err(SignatureError::Stale));
        assert_eq!(verify(Some(&header), BODY, SECRET, 300, NOW + 300), Ok(()));
        let long = format!("{header},{}", "v1=00,".repeat(200));
        assert_eq!(verify(Some(&long), BODY, SECRET, 300, NOW), Err(SignatureError::Malformed));
    }
}
