//! What can go wrong while serving a request, and what the visitor is shown for it:
//! a short page naming the problem and what to do, never internals or a stack trace.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("session store at {url} failed: {source}")]
    Store {
        url: String,
        source: redis::RedisError,
    },
    #[error("could not encode the session: {0}")]
    Encode(serde_json::Error),
    #[error("could not sign the session token: {0}")]
    Token(jsonwebtoken::errors::Error),
    #[error("{0}")]
    BadInput(&'static str),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            AppError::Store { url, source } if unreachable(source) => {
                tracing::error!(error = %self, "request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "The session store ({url}) is not answering, so sessions can't be read \
                         right now. Start it (session-store, or redis-server) and reload."
                    ),
                )
            }
            AppError::Store { url, .. } => {
                tracing::error!(error = %self, "request failed");
                (
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "The session store ({url}) answered with an error. The node's log says \
                         which; check that the URL points at a Redis-protocol server."
                    ),
                )
            }
            AppError::Encode(_) | AppError::Token(_) => {
                tracing::error!(error = %self, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The session could not be saved. The node's log says why.".to_string(),
                )
            }
            AppError::BadInput(why) => (StatusCode::BAD_REQUEST, (*why).to_string()),
        };
        (status, [("retry-after", "1")], message).into_response()
    }
}

/// Whether the store could not be reached at all, as opposed to answering with an error.
fn unreachable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
}
