//! Signing secrets at rest: encrypted with ChaCha20-Poly1305 (RustCrypto's AEAD) under
//! `WEBHOOK_SECRETS_KEY` (32 bytes, hex or base64), a fresh random nonce per secret, and
//! the endpoint's id as associated data, so a ciphertext moved to another row does not
//! open. A backup of the database holds ciphertext only.
//!
//! Without the setting, development and test derive a key from `JWT_SECRET` (so a local
//! stack works with no extra step); production refuses to store or use a secret.

use chacha20poly1305::{
    ChaCha20Poly1305, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const NONCE_LEN: usize = 12;

/// The key secrets are sealed with; cheap to clone.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Option<ChaCha20Poly1305>,
}

/// Why a secret cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("WEBHOOK_SECRETS_KEY is not set: endpoint secrets cannot be stored or read")]
    NoKey,
    #[error("a stored webhook secret does not open with WEBHOOK_SECRETS_KEY")]
    Corrupt,
}

impl SecretBox {
    /// From the configured key (already validated: 32 bytes), or in non-production a key
    /// derived from `fallback` (the token secret); `None` for neither.
    pub fn new(key: Option<[u8; 32]>, fallback: Option<&[u8]>) -> Self {
        let key = key.or_else(|| {
            fallback.map(|secret| {
                let mut h = Sha256::new();
                h.update(b"storefront webhook secrets v1\0");
                h.update(secret);
                h.finalize().into()
            })
        });
        Self { cipher: key.map(|k| ChaCha20Poly1305::new(&Key::from(k))) }
    }

    /// `nonce || ciphertext+tag` of `secret`, bound to `endpoint`.
    pub fn seal(&self, endpoint: Uuid, secret: &str) -> Result<Vec<u8>, SecretError> {
        let cipher = self.cipher.as_ref().ok_or(SecretError::NoKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let sealed = cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: secret.as_bytes(), aad: endpoint.as_bytes() })
            .map_err(|_| SecretError::Corrupt)?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// The secret [`Self::seal`] sealed for `endpoint`.
    pub fn open(&self, endpoint: Uuid, sealed: &[u8]) -> Result<String, SecretError> {
        let cipher = self.cipher.as_ref().ok_or(SecretError::NoKey)?;
        if sealed.len() <= NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Corrupt)?;
        let plain = cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: endpoint.as_bytes() })
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_endpoint_and_key() {
        let sb = SecretBox::new(Some([7; 32]), None);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = sb.seal(a, "whsec_abc").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"), "ciphertext only");
        assert_eq!(sb.open(a, &sealed).unwrap(), "whsec_abc");
        assert!(matches!(sb.open(b, &sealed), Err(SecretError::Corrupt)), "moved to another row");
        let other = SecretBox::new(Some([8; 32]), None);
        assert!(matches!(other.open(a, &sealed), Err(SecretError::Corrupt)), "another key");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(sb.open(a, &flipped).is_err(), "tampered");
        assert_ne!(sb.seal(a, "whsec_abc").unwrap(), sealed, "a fresh nonce each time");
        assert!(matches!(SecretBox::new(None, None).seal(a, "x"), Err(SecretError::NoKey)));
    }
}
