//! Catalogue rules as plain types and pure functions: the bounds every entry point
//! validates against, the sort orders, and optimistic-concurrency preconditions.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Highest price, in minor units (1 000 000.00 in a currency of two decimals).
pub const MAX_PRICE_CENTS: i64 = 100_000_000;
pub use crate::shared::domain::MAX_STOCK;

/// Sort orders of the list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ProductSort {
    #[serde(rename = "name")]
    NameAsc,
    #[serde(rename = "-name")]
    NameDesc,
    #[serde(rename = "price")]
    PriceAsc,
    #[serde(rename = "-price")]
    PriceDesc,
    #[serde(rename = "createdAt")]
    CreatedAsc,
    #[default]
    #[serde(rename = "-createdAt")]
    CreatedDesc,
}

/// What a write requires of the product's current version (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No `If-Match` (or `*`): write whatever the version.
    #[default]
    None,
    /// Only if the current version is one of these (none parseable: nothing matches).
    OneOf(Vec<i32>),
}

impl Precondition {
    /// From an `If-Match` header value: strong tags only (RFC 9110 compares strongly
    /// there); a weak or garbage tag can never match, so it is a 412, never a silent
    /// overwrite.
    pub fn if_match(value: Option<&str>) -> Self {
        match value {
            None => Self::None,
            Some(v) if v.trim() == "*" => Self::None,
            Some(v) => Self::OneOf(versions_in(v, false).collect()),
        }
    }

    /// Whether a product at `version` satisfies it.
    pub fn holds_for(&self, version: i32) -> bool {
        match self {
            Self::None => true,
            Self::OneOf(versions) => versions.contains(&version),
        }
    }

    /// The versions to compare against in SQL (`None`: any).
    pub fn versions(&self) -> Option<&[i32]> {
        match self {
            Self::None => None,
            Self::OneOf(v) => Some(v),
        }
    }
}

/// The versions an `If-Match` / `If-None-Match` list names; `weak` says whether weak
/// tags (`W/"3"`) count: they do for `If-None-Match`, never for `If-Match`.
pub fn versions_in(value: &str, weak: bool) -> impl Iterator<Item = i32> + '_ {
    value.split(',').filter_map(move |tag| {
        let tag = tag.trim();
        let tag = match tag.strip_prefix("W/") {
            Some(_) if !weak => return None,
            Some(stripped) => stripped,
            None => tag,
        };
        tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|v| v.parse().ok())
    })
}

/// Whether an `If-None-Match` value names `version` (weak tags count) or is `*`.
pub fn none_match_hits(value: &str, version: i32) -> bool {
    value.trim() == "*" || versions_in(value, true).any(|v| v == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_strong_tags_only() {
        assert_eq!(Precondition::if_match(None), Precondition::None);
        assert_eq!(Precondition::if_match(Some(" * ")), Precondition::None);
        let p = Precondition::if_match(Some(r#""3", W/"4", "x""#));
        assert_eq!(p, Precondition::OneOf(vec![3]));
        assert!(p.holds_for(3) && !p.holds_for(4));
        assert!(!Precondition::if_match(Some("garbage")).holds_for(1));
    }

    #[test]
    fn if_none_match_accepts_weak_tags_and_star() {
        assert!(none_match_hits(r#"W/"2""#, 2));
        assert!(none_match_hits("*", 9));
        assert!(!none_match_hits(r#""1""#, 2));
    }
}
