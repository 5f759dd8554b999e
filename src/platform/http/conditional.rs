//! Conditional requests over a row's `version` (RFC 9110, "Conditional Requests"): the strong `ETag`
//! `"<version>"` a read answers with, `If-None-Match` → 304 on reads, and `If-Match` as
//! the precondition of a write (optimistic concurrency: a stale tag is a 412, never a
//! silent overwrite).
//!
//! Written here, not taken from a crate, because no kept crate does it for generated
//! responses: tower-http's conditional handling belongs to `ServeDir` (files and their
//! modification times), and axum has none. It was the catalogue's own code, moved here
//! so that every feature (and every generated one) shares it. Exit plan: a crate that
//! answers `If-Match`/`If-None-Match` from a handler-supplied version replaces it.

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::error::AppError;

/// Longest `If-Match` / `If-None-Match` taken, in bytes: room for dozens of tags (a client
/// sends one or two); a longer one is a 400 naming the header, as the OpenAPI document says.
pub const MAX_TAG_LIST_LEN: usize = 1024;

/// The header's value, `None` when absent; a 400 when it is longer than
/// [`MAX_TAG_LIST_LEN`]. A value that is not even text reads as empty (it never matches).
fn tag_list<'h>(headers: &'h HeaderMap, name: HeaderName, shown: &str) -> Result<Option<&'h str>, AppError> {
    match headers.get(&name) {
        None => Ok(None),
        Some(v) if v.len() > MAX_TAG_LIST_LEN => {
            Err(AppError::field(shown, format!("must be at most {MAX_TAG_LIST_LEN} bytes")))
        }
        Some(v) => Ok(Some(v.to_str().unwrap_or_default())),
    }
}

/// The strong `ETag` of a row version.
pub fn etag(version: i32) -> HeaderValue {
    // From the `String` itself, not a copy of it.
    HeaderValue::try_from(format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// `res` with the `ETag` of `version`.
pub fn tagged(res: impl IntoResponse, version: i32) -> Response {
    let mut res = res.into_response();
    res.headers_mut().insert(header::ETAG, etag(version));
    res
}

/// A 304 with the `ETag` when the request's `If-None-Match` names `version`, else `None`.
/// An `If-None-Match` longer than [`MAX_TAG_LIST_LEN`] is a 400.
pub fn not_modified(headers: &HeaderMap, version: i32) -> Result<Option<Response>, AppError> {
    let if_none_match = tag_list(headers, header::IF_NONE_MATCH, "If-None-Match")?;
    Ok(if_none_match
        .is_some_and(|value| none_match_hits(value, version))
        .then(|| tagged(StatusCode::NOT_MODIFIED, version)))
}

/// What a write requires of the row's current version (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No `If-Match` (or `*`): write whatever the version.
    #[default]
    None,
    /// Only if the current version is one of these (none parseable: nothing matches).
    OneOf(Vec<i32>),
}

impl Precondition {
    /// The request's `If-Match`; a header that is not even text can never match.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, AppError> {
        tag_list(headers, header::IF_MATCH, "If-Match").map(Self::if_match)
    }

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

    /// Whether a row at `version` satisfies it.
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

    #[test]
    fn a_current_if_none_match_is_a_304_with_the_tag() {
        let mut headers = HeaderMap::new();
        assert!(not_modified(&headers, 2).unwrap().is_none());
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(r#""2""#));
        let res = not_modified(&headers, 2).unwrap().expect("a 304");
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[header::ETAG], r#""2""#);
        assert!(not_modified(&headers, 3).unwrap().is_none());
    }

    #[test]
    fn a_tag_list_longer_than_the_bound_is_a_400_naming_the_header() {
        let mut headers = HeaderMap::new();
        let long = HeaderValue::try_from(format!("\"1\",{}", " ".repeat(MAX_TAG_LIST_LEN))).unwrap();
        headers.insert(header::IF_MATCH, long.clone());
        headers.insert(header::IF_NONE_MATCH, long);
        let e = Precondition::from_headers(&headers).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (400, "VALIDATION_ERROR"));
        assert!(format!("{:?}", e.envelope().error.fields).contains("If-Match"));
        assert!(not_modified(&headers, 1).is_err());
        let fits = HeaderValue::try_from(format!("\"1\"{}", " ".repeat(MAX_TAG_LIST_LEN - 3))).unwrap();
        headers.insert(header::IF_MATCH, fits);
        assert_eq!(Precondition::from_headers(&headers).unwrap(), Precondition::OneOf(vec![1]));
    }
}
