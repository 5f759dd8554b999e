//! Last-resort envelope: any error response that did not come from [`AppError`] (axum's
//! own 405, a tower timeout, a layer's bare status) is rewritten into the error envelope,
//! keeping headers such as `Allow`. Responses marked [`Enveloped`] pass.

use axum::response::{IntoResponse, Response};

use crate::platform::http::error::{AppError, Enveloped};

/// Rewrites a bare 4xx/5xx response into the envelope.
pub fn ensure(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res.extensions().get::<Enveloped>().is_some()
    {
        return res;
    }
    let (parts, _) = res.into_parts();
    let mut enveloped = AppError::from_status(status).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            enveloped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    enveloped
}
