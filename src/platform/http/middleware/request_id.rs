//! `X-Request-Id`: the client's id when it is sane (1..=128 visible ASCII characters),
//! else a new UUID. tower-http's request-id layers keep it in the request extensions and
//! put it on the response; this module drops an insane client id before they see it,
//! makes new ids, and keeps the id in a task-local that error bodies read.

use axum::http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.to_str().unwrap_or_default().to_owned()).ok()
}

/// Whether a client's id may be kept: 1..=128 visible ASCII characters.
pub fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Removes a client's `X-Request-Id` that is not sane (too long, empty, not visible
/// ASCII, or sent twice), so the request gets a new one.
pub fn drop_insane<B>(req: &mut axum::http::Request<B>) {
    let mut values = req.headers().get_all(&X_REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (None, _) => true,
        (Some(one), None) => is_sane(one.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
}

/// The layer of [`DropInsane`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DropInsaneLayer;

impl<S> tower::Layer<S> for DropInsaneLayer {
    type Service = DropInsane<S>;

    fn layer(&self, inner: S) -> DropInsane<S> {
        DropInsane(inner)
    }
}

/// [`drop_insane`] before the inner service, with neither a clone nor a boxed future
/// (axum's `map_request` costs both on every request).
#[derive(Clone, Debug)]
pub struct DropInsane<S>(S);

impl<S, B> tower::Service<axum::http::Request<B>> for DropInsane<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        drop_insane(&mut req);
        self.0.call(req)
    }
}

/// New ids: v4 UUIDs from the thread's RNG (`Uuid::new_v4` asks the kernel each time).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomUuid;

impl MakeRequestId for RandomUuid {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let value = HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))
            .expect("a UUID is a valid header value");
        Some(RequestId::new(value))
    }
}

/// Runs `work` with `id` as the current request id (error envelopes read it).
pub async fn scope<F: Future>(id: HeaderValue, work: F) -> F::Output {
    CURRENT.scope(id, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_short_visible_ascii() {
        assert!(is_sane(b"abc-123"));
        assert!(is_sane(&[b'a'; 128]));
        assert!(!is_sane(&[b'a'; 129]));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane("é".as_bytes()));
    }

    #[test]
    fn insane_and_repeated_ids_are_dropped_and_sane_ones_kept() {
        use axum::extract::Request;
        let with = |values: &[&[u8]]| {
            let mut req = Request::new(axum::body::Body::empty());
            for v in values {
                req.headers_mut().append(&X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
            }
            req
        };
        let mut kept = with(&[b"abc"]);
        drop_insane(&mut kept);
        assert_eq!(kept.headers()[&X_REQUEST_ID], "abc");
        for bad in [&[&[b'a'; 129][..]][..], &[b"a b"], &[b"a", b"b"]] {
            let mut req = with(bad);
            drop_insane(&mut req);
            assert!(req.headers().get(&X_REQUEST_ID).is_none());
        }
    }
}
