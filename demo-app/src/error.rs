//! What can go wrong while serving a request, and what the visitor is shown for it:
//! a short page naming the problem and what to do, never internals or a stack trace.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use session_layer::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadInput(&'static str),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Store(err) => {
                tracing::error!(error = %err, "request failed");
                let message = match err {
                    StoreError::Unavailable { .. } => {
                        "The session store is not answering, so sessions can't be changed \
                         right now. Start it (session-store, or redis-server) and reload."
                    }
                    StoreError::Contended { .. } => {
                        "Other requests kept changing this session at the same moment. \
                         Reload to try again."
                    }
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    message,
                )
                    .into_response()
            }
            AppError::BadInput(why) => (StatusCode::BAD_REQUEST, *why).into_response(),
        }
    }
}
