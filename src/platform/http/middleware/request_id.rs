//! `X-Request-Id` (SPEC §2): the client's id when it is sane (1..=128 visible ASCII
//! characters), else a new UUID. The id is put in the request extensions, in a task-local
//! that error bodies read, and on every response.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, cheap to clone: the header value itself (a client's id
/// shares the request's buffer), sent back as it is.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id as text (always visible ASCII: see [`is_sane`]).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the `X-Request-Id` value of the response.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.as_str().to_owned()).ok()
}

/// Accepts an incoming id only if it is 1..=128 visible ASCII characters.
pub fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Outermost middleware: assigns the id and runs the rest of the stack inside its scope.
/// The request's id: a sane `X-Request-Id` from the client, else a new v4 UUID (from the
/// thread's RNG: `Uuid::new_v4` asks the kernel each time). Stored in the extensions.
pub fn assign_id(mut req: Request) -> (RequestId, Request) {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => {
            let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))
                .expect("a UUID is a valid header value")
        }
    };
    let request_id = RequestId(id);
    req.extensions_mut().insert(request_id.clone());
    (request_id, req)
}

/// Runs `work` with `id` as the current request id (error envelopes read it).
pub async fn scope<F: Future>(id: RequestId, work: F) -> F::Output {
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
}
