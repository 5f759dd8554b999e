//! [`Email`]: an e-mail address in the one form it is stored, compared and rate-limited
//! in (trimmed, lower-cased, valid for the validator and for the mailer, at most 254
//! characters). Every entry
//! point that takes an address (register, login, forgot, create-admin) parses it here,
//! so no path can look up or store an address in another form.

use std::fmt;

use validator::{ValidateEmail, ValidationError};

/// A normalised, valid e-mail address. Private field: only [`Email::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a string is not an [`Email`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be a valid e-mail address")]
pub struct InvalidEmail;

impl Email {
    /// The longest address SMTP can carry (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// Trims, lower-cases and validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let email = raw.trim().to_lowercase();
        // Both checks: the validator's, and the parser of the mailer that will send to it,
        // so an address that registers can always be mailed (no dead-lettered welcome).
        if email.len() <= Self::MAX_LEN && email.validate_email() && email.parse::<lettre::Address>().is_ok()
        {
            Ok(Self(email))
        } else {
            Err(InvalidEmail)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `#[validate(custom(function = "crate::shared::email::validate"))]` for request DTOs
/// that must carry a valid address.
pub fn validate(raw: &str) -> Result<(), ValidationError> {
    Email::parse(raw)
        .map(|_| ())
        .map_err(|e| ValidationError::new("email").with_message(e.to_string().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        assert_eq!(Email::parse("  Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for raw in [
            "",
            "   ",
            "ann",
            "ann@",
            "@example.com",
            "ann@@example.com",
            "a b@example.com",
            // The validator takes a bracketed IP literal with text before it; the mailer does not.
            "a@x y[1.2.3.4]",
        ] {
            assert_eq!(Email::parse(raw), Err(InvalidEmail), "{raw:?}");
        }
    }

    #[test]
    fn the_length_limit_applies_after_trimming() {
        let local = "a".repeat(64);
        let domain =
            format!("{}.com", ["b".repeat(60), "c".repeat(60), "d".repeat(60), "e".repeat(60)].join("."));
        let long = format!("{local}@{domain}");
        assert!(long.len() > Email::MAX_LEN);
        assert!(Email::parse(&long).is_err());
        assert!(Email::parse(&format!("  {}  ", "ann@example.com")).is_ok());
    }

    #[test]
    fn parsing_is_idempotent() {
        for raw in ["Ann@Example.com", " x.y+z@sub.example.org "] {
            let once = Email::parse(raw).unwrap();
            assert_eq!(Email::parse(once.as_str()).unwrap(), once);
        }
    }
}
