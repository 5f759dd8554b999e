//! Signed list cursors: an opaque, tamper-proof position in a list, good only for the
//! list, filters and sort it was given out for.
//!
//! A cursor is `base64url(JSON {l: list, f: filters fingerprint, p: position})`, a dot,
//! and `base64url(HMAC-SHA256)` of that first part. The key is derived from the
//! deployment's `JWT_SECRET`, so every instance reads every other instance's cursors, and
//! nobody without the secret can forge or alter one (the MAC is checked in constant time
//! by the `hmac` crate). The position is whatever the list sorts by (the sort key and the
//! id that breaks ties), so the next page is a keyset seek that costs the same at any
//! depth. The request that follows a cursor repeats the list's filters and sort: their
//! fingerprint is inside the cursor, and a request whose filters differ is refused
//! (`limit` may change).

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use super::error::AppError;

/// Longest cursor a request may send. A position holds its sort key: a name of 200
/// characters of four bytes each makes a cursor of about 1 250 characters (and 200 ASCII
/// characters about 450), so this leaves room for any text key up to 200 characters.
pub const MAX_CURSOR_LEN: usize = 2048;

const NOT_OURS: &str = "is not a cursor this list gave out, or it was changed";
const OTHER_FILTERS: &str = "was given out for other filters or another sort: repeat those of the first page, or start again without a cursor";

/// Signs and opens cursors; cheap to clone.
#[derive(Clone)]
pub struct Cursors(Arc<[u8; 32]>);

#[derive(Serialize, Deserialize)]
struct Envelope<P> {
    /// The list's name.
    l: String,
    /// Fingerprint of the list's filters and sort.
    f: String,
    /// The position: the last row's sort key and id.
    p: P,
}

impl Cursors {
    /// The cursor key, derived from `secret` (the token-signing secret of the
    /// deployment) for this one use.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(b"storefront list cursors v1");
        Self(Arc::new(mac.finalize().into_bytes().into()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..]).expect("HMAC takes a key of any length")
    }

    /// A cursor for `position` in `list` under `filters` (its filters and sort, not its
    /// `limit`).
    pub fn encode<P: Serialize>(&self, list: &str, filters: &impl Serialize, position: &P) -> String {
        let envelope = Envelope { l: list.to_owned(), f: fingerprint(filters), p: position };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&envelope).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The position inside `cursor`, if this deployment signed it for `list` under the
    /// same `filters`; else a 400 naming the `cursor` parameter.
    pub fn decode<P: DeserializeOwned>(
        &self,
        list: &str,
        filters: &impl Serialize,
        cursor: &str,
    ) -> Result<P, AppError> {
        let bad = refused;
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(bad());
        }
        let (body, tag) = cursor.split_once('.').ok_or_else(bad)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| bad())?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let envelope: Envelope<P> = serde_json::from_slice(&json).map_err(|_| bad())?;
        if envelope.l != list {
            return Err(bad());
        }
        if envelope.f != fingerprint(filters) {
            return Err(AppError::field("cursor", OTHER_FILTERS));
        }
        Ok(envelope.p)
    }
}

/// The 400 of a cursor that is not this list's: for a list that finds a signed cursor's
/// position unusable (it cannot happen unless the list's format changed).
pub fn refused() -> AppError {
    AppError::field("cursor", NOT_OURS)
}

impl Cursors {
    /// Where a page of `list` under `filters` starts: in cursor mode the position its
    /// cursor holds (a 400 when the cursor is not this list's, or not under these
    /// filters); in page mode `None`, once page mode's depth bound is checked.
    pub fn start<P: DeserializeOwned>(
        &self,
        list: &str,
        filters: &impl Serialize,
        page: &super::response::PageParams,
    ) -> Result<Option<P>, AppError> {
        match &page.cursor {
            Some(cursor) => self.decode(list, filters, cursor).map(Some),
            None => page.check_depth().map(|()| None),
        }
    }
}

/// 16 hex digits of SHA-256 over the filters' canonical JSON (maps sorted by key).
fn fingerprint(filters: &impl Serialize) -> String {
    let canonical = serde_json::to_value(filters).and_then(|v| serde_json::to_vec(&v)).unwrap_or_default();
    Sha256::digest(&canonical)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn cursors() -> Cursors {
        Cursors::new(b"a test secret")
    }

    #[test]
    fn a_cursor_opens_with_its_list_and_filters_only() {
        let c = cursors();
        let filters = json!({"status": "paid", "sort": "-createdAt"});
        let cursor = c.encode("orders", &filters, &("2026-12-07T10:00:00Z", 42));
        let back: (String, i32) = c.decode("orders", &filters, &cursor).unwrap();
        assert_eq!(back, ("2026-12-07T10:00:00Z".to_owned(), 42));
        // Key order does not matter; another value does.
        let same = json!({"sort": "-createdAt", "status": "paid"});
        assert!(c.decode::<(String, i32)>("orders", &same, &cursor).is_ok());
        let other = json!({"status": "shipped", "sort": "-createdAt"});
        let e = c.decode::<(String, i32)>("orders", &other, &cursor).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(format!("{:?}", e.envelope().error.fields).contains("other filters"));
        // Another list's cursor is refused.
        assert!(c.decode::<(String, i32)>("users", &filters, &cursor).is_err());
    }

    #[test]
    fn a_cursor_holding_a_long_text_key_fits_the_bound() {
        let c = cursors();
        let name = "\u{1F600}".repeat(200);
        let position = (json!({"n": name}), "4d0f3c59-7f65-4f0a-9d44-1c2b3a4d5e6f");
        let cursor = c.encode("products", &json!({"sort": "name"}), &position);
        assert!(cursor.len() <= MAX_CURSOR_LEN, "{}", cursor.len());
        let back: (Value, String) = c.decode("products", &json!({"sort": "name"}), &cursor).unwrap();
        assert_eq!(back.0["n"], name);
    }

    #[test]
    fn tampered_forged_and_foreign_cursors_are_400() {
        let c = cursors();
        let cursor = c.encode("orders", &json!({}), &1);
        let (body, tag) = cursor.split_once('.').unwrap();
        // A changed position, signed with nothing.
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"l":"orders","f":"x","p":2}"#);
        for bad in [
            format!("{forged_body}.{tag}"),
            format!("{body}.{}", URL_SAFE_NO_PAD.encode([0_u8; 32])),
            format!("{body}x.{tag}"),
            body.to_owned(),
            "garbage".to_owned(),
            "x".repeat(MAX_CURSOR_LEN + 1),
            // Signed by another deployment's secret.
            Cursors::new(b"another secret").encode("orders", &json!({}), &1),
        ] {
            let e = c.decode::<i32>("orders", &json!({}), &bad).unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (400, "VALIDATION_ERROR"), "{bad}");
        }
    }
}
