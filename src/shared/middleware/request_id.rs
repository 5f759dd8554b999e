//! `X-Request-Id` (SPEC §2): the client's id when it is sane (1..=128 visible ASCII
//! characters), else a new UUID. The id is put in the request extensions, in a task-local
//! that error bodies read, and on every response.

use std::sync::Arc;

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, cheap to clone.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.0.to_string()).ok()
}

/// Accepts an incoming id only if it is 1..=128 visible ASCII characters.
pub fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Outermost middleware: assigns the id and runs the rest of the stack inside its scope.
pub async fn assign(mut req: Request, next: Next) -> Response {
    let id: Arc<str> = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if is_sane(v.as_bytes()) => Arc::from(v.to_str().unwrap_or_default()),
        _ => Arc::from(uuid::Uuid::new_v4().to_string()),
    };
    let request_id = RequestId(id.clone());
    req.extensions_mut().insert(request_id.clone());
    let mut res = CURRENT.scope(request_id, next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    res
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
}
