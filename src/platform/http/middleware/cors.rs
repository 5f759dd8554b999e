//! CORS from the configured origin list, with every header value built once at start.
//!
//! The same answers tower-http's `CorsLayer` gave this API (origin list or `*`, the
//! methods and headers the API uses, no credentials), without its per-request cost: the
//! layer was cloned with its `Vec`s for every request, and built a header map and a
//! fresh `Vary` value for every response.
//!
//! - Every `OPTIONS` request is a preflight, answered here with 200 and an empty body
//!   (no route answers `OPTIONS`): the allowed methods and headers, `Max-Age`, and
//!   `Access-Control-Allow-Origin` when the origin is allowed.
//! - Every other response gets `Access-Control-Expose-Headers`, and
//!   `Access-Control-Allow-Origin` when the origin is allowed.
//! - Every response gets `Vary: origin, access-control-request-method,
//!   access-control-request-headers`, appended to any `Vary` it already has.

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Response, header},
};

use crate::platform::config::Settings;

/// The allowed origins and the header values every answer uses.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Origins,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
    vary: HeaderValue,
}

#[derive(Debug, Clone)]
enum Origins {
    /// `CORS_ORIGIN=*`: every origin, answered with `*`.
    Any,
    /// Only these, each echoed back when it is the request's `Origin`.
    List(Vec<HeaderValue>),
}

impl Cors {
    /// The policy `CORS_ORIGIN` configures.
    pub fn from_settings(settings: &Settings) -> Self {
        Self::for_origins(&settings.cors_origin)
    }

    /// `*` among `origins` allows every origin; otherwise only those listed (an entry that
    /// is not a valid header value, which config validation already refuses, matches
    /// nothing).
    pub fn for_origins(origins: &[String]) -> Self {
        let origins = if origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::List(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect())
        };
        Self {
            origins,
            allow_methods: HeaderValue::from_static("GET,POST,PATCH,PUT,DELETE"),
            allow_headers: HeaderValue::from_static(
                "authorization,content-type,if-match,if-none-match,idempotency-key,x-request-id",
            ),
            expose_headers: HeaderValue::from_static(
                "x-request-id,etag,location,retry-after,idempotent-replayed",
            ),
            max_age: HeaderValue::from_static("600"),
            vary: HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        }
    }

    /// The `Access-Control-Allow-Origin` a request with these headers gets, if any. The
    /// echoed origin shares the request's buffer (no copy).
    pub fn allow_origin(&self, request: &HeaderMap) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => request.get(header::ORIGIN).filter(|o| list.contains(o)).cloned(),
        }
    }

    /// The answer to a preflight (`OPTIONS`) request.
    pub fn preflight(&self, allow_origin: Option<HeaderValue>) -> Response<Body> {
        let mut res = Response::new(Body::empty());
        let headers = res.headers_mut();
        headers.insert(header::VARY, self.vary.clone());
        if let Some(origin) = allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        res
    }

    /// Adds the CORS headers to the response of any other request.
    pub fn decorate(&self, allow_origin: Option<HeaderValue>, response: &mut HeaderMap) {
        response.append(header::VARY, self.vary.clone());
        if let Some(origin) = allow_origin {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, self.expose_headers.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors::for_origins(&origins.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
    }

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h
    }

    #[test]
    fn a_listed_origin_is_echoed_and_any_other_gets_no_allow_origin() {
        let c = cors(&["https://shop.example", "http://localhost:3000"]);
        assert_eq!(c.allow_origin(&with_origin("https://shop.example")).unwrap(), "https://shop.example");
        assert_eq!(c.allow_origin(&with_origin("http://localhost:3000")).unwrap(), "http://localhost:3000");
        assert!(c.allow_origin(&with_origin("https://shop.example.evil")).is_none());
        assert!(c.allow_origin(&with_origin("https://SHOP.example")).is_none());
        assert!(c.allow_origin(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_wildcard_allows_every_origin_with_a_star() {
        let c = cors(&["*"]);
        assert_eq!(c.allow_origin(&with_origin("https://any.example")).unwrap(), "*");
        assert_eq!(c.allow_origin(&HeaderMap::new()).unwrap(), "*");
    }

    #[test]
    fn a_preflight_answers_200_with_the_methods_headers_and_max_age() {
        let c = cors(&["https://shop.example"]);
        let res = c.preflight(c.allow_origin(&with_origin("https://shop.example")));
        assert_eq!(res.status(), 200);
        let h = res.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://shop.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET,POST,PATCH,PUT,DELETE");
        assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("idempotency-key"));
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[header::VARY], "origin, access-control-request-method, access-control-request-headers");
        assert!(!h.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));
    }

    #[test]
    fn a_response_keeps_its_own_vary_and_gets_the_exposed_headers() {
        let c = cors(&["https://shop.example"]);
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        c.decorate(None, &mut h);
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary.len(), 2);
        assert_eq!(vary[0], "accept-encoding");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap().contains("idempotent-replayed"));
    }
}
