//! The cryptography behind `jsonwebtoken`: HS256 only, from RustCrypto's `hmac` and `sha2`.
//!
//! jsonwebtoken's own providers come with every algorithm: its `rust_crypto` feature
//! compiles the `rsa` crate, which carries an unfixed timing advisory (RUSTSEC-2023-0071,
//! "Marvin"), and `aws_lc_rs` builds a C library. The tokens here are HS256 and nothing
//! else (the validation pins it), so the process installs this provider, which answers
//! HS256 and refuses every other algorithm, and the `rsa` code is not in the binary.
//! The MAC is computed and compared (in constant time) by `hmac`; this module only plugs
//! it into jsonwebtoken's signer and verifier traits. Exit plan: when jsonwebtoken offers
//! a feature with HMAC alone, enable it and delete this module.

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::ErrorKind,
};
use sha2::Sha256;
use signature::{Signer, Verifier};

type HmacSha256 = Hmac<Sha256>;

struct Hs256(HmacSha256);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        mac.verify_slice(signature).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn hs256(algorithm: &Algorithm, secret: &[u8]) -> jsonwebtoken::errors::Result<Hs256> {
    if *algorithm != Algorithm::HS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    HmacSha256::new_from_slice(secret).map(Hs256).map_err(|_| ErrorKind::InvalidKeyFormat.into())
}

static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: |algorithm, key: &EncodingKey| {
        Ok(Box::new(hs256(algorithm, key.as_bytes())?) as Box<dyn JwtSigner>)
    },
    verifier_factory: |algorithm, key: &DecodingKey| {
        Ok(Box::new(hs256(algorithm, key.try_get_as_bytes()?)?) as Box<dyn JwtVerifier>)
    },
    key_utils: KeyUtils::new_unimplemented(),
};

/// Installs the HS256 provider for the process (once; later calls change nothing).
pub fn install() {
    let _ = HS256_ONLY.install_default();
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Header, Validation};

    use super::*;

    #[test]
    fn hs256_signs_and_verifies_and_every_other_algorithm_is_refused() {
        install();
        let key = EncodingKey::from_secret(b"a secret of at least thirty-two bytes!");
        let claims = serde_json::json!({"sub": "ann", "exp": 4_102_444_800u64});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        let decoding = DecodingKey::from_secret(b"a secret of at least thirty-two bytes!");
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &Validation::new(Algorithm::HS256));
        assert_eq!(data.unwrap().claims["sub"], "ann");
        // Another key, or a flipped signature: refused.
        let other = DecodingKey::from_secret(b"another secret of thirty-two bytes!!");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&token, &other, &Validation::new(Algorithm::HS256))
                .is_err()
        );
        let mut tampered = token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &tampered,
                &decoding,
                &Validation::new(Algorithm::HS256)
            )
            .is_err()
        );
        // HS512 is not served.
        assert!(jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &key).is_err());
    }
}
