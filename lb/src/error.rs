//! Proxying errors: which side failed, whether a retry is allowed, and what the client sees.
//!
//! Only a failure to connect is retryable: then nothing reached the backend, so even a
//! POST can safely go to another one (pingora's failover rule, HAProxy's `retries` with
//! `option redispatch`). Once a request was sent, the backend may have acted on it, so
//! the client gets a 502 or 504 that says so instead of a silent second attempt.

use std::error::Error;
use std::time::Duration;

use http::StatusCode;

/// Who is at fault, for logs and for the status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client, e.g. it went away while sending its body.
    Downstream,
    /// A backend.
    Upstream,
    /// The LB itself has nowhere to send the request.
    Internal,
}

/// What went wrong; the text is the body the client gets.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("no healthy backend: all {total} backends are down")]
    NoHealthyBackend { total: usize },
    #[error("could not connect to backend {backend} ({reason})")]
    Connect { backend: String, reason: String },
    #[error("could not connect to backend {backend} ({reason}); gave up after {attempts} attempts")]
    GaveUp {
        backend: String,
        reason: String,
        attempts: usize,
    },
    #[error(
        "could not connect to backend {backend} ({reason}); the request body was streamed \
         (over 64 KiB or of unknown length), so it was not retried on another backend"
    )]
    NotReplayable { backend: String, reason: String },
    #[error("backend {backend} failed ({reason}); the request was not retried")]
    Upstream { backend: String, reason: String },
    #[error(
        "backend {backend} sent no response headers within {timeout:?}; the request was not retried"
    )]
    Timeout { backend: String, timeout: Duration },
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error("the request body did not arrive within {timeout:?}")]
    ClientTimeout { timeout: Duration },
    #[error("the request line and headers take more than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("{what} is not supported by this reverse proxy")]
    Unsupported { what: String },
}

/// A failed request, with whether it may be sent to another backend.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    /// True only when nothing was sent upstream.
    pub retryable: bool,
    /// The backend closed a pooled connection as the request went out on it (hyper's
    /// incomplete message): an idempotent request may go again on a fresh connection.
    pub stale_connection: bool,
}

impl ProxyError {
    /// An error of `kind`; retryable exactly when it is a connect failure.
    pub fn new(kind: ErrorKind) -> Self {
        let retryable = matches!(kind, ErrorKind::Connect { .. });
        ProxyError {
            kind,
            retryable,
            stale_connection: false,
        }
    }

    /// The final form of a retryable error whose request could not be replayed.
    pub fn not_replayable(self) -> Self {
        match self.kind {
            ErrorKind::Connect { backend, reason } => {
                ProxyError::new(ErrorKind::NotReplayable { backend, reason })
            }
            kind => ProxyError {
                kind,
                retryable: false,
                stale_connection: false,
            },
        }
    }

    /// The final form of the last retryable error once `attempts` tries are used up.
    pub fn gave_up(self, attempts: usize) -> Self {
        match self.kind {
            ErrorKind::Connect { backend, reason } => ProxyError::new(ErrorKind::GaveUp {
                backend,
                reason,
                attempts,
            }),
            kind => ProxyError {
                kind,
                retryable: false,
                stale_connection: false,
            },
        }
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        match self.kind {
            ErrorKind::NoHealthyBackend { .. } => Side::Internal,
            ErrorKind::BadRequest { .. }
            | ErrorKind::ClientTimeout { .. }
            | ErrorKind::HeadTooLarge { .. }
            | ErrorKind::Unsupported { .. } => Side::Downstream,
            ErrorKind::Connect { .. }
            | ErrorKind::GaveUp { .. }
            | ErrorKind::NotReplayable { .. }
            | ErrorKind::Upstream { .. }
            | ErrorKind::Timeout { .. } => Side::Upstream,
        }
    }

    /// The status the client gets, as HAProxy and nginx would answer.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::NoHealthyBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ErrorKind::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::Connect { .. }
            | ErrorKind::GaveUp { .. }
            | ErrorKind::NotReplayable { .. }
            | ErrorKind::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short plain-text body: the status line and what happened.
    pub fn body(&self) -> String {
        let status = self.status();
        format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            self.kind
        )
    }
}

/// An error and its causes on one line, since hyper's top-level messages are vague.
pub fn describe(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connect_failures_are_retryable() {
        let connect = ProxyError::new(ErrorKind::Connect {
            backend: "a".into(),
            reason: "refused".into(),
        });
        assert!(connect.retryable);
        assert_eq!(connect.status(), StatusCode::BAD_GATEWAY);
        let final_error = connect.gave_up(3);
        assert!(!final_error.retryable);
        assert!(final_error.body().contains("gave up after 3 attempts"));
        let upstream = ProxyError::new(ErrorKind::Upstream {
            backend: "a".into(),
            reason: "reset".into(),
        });
        assert!(!upstream.retryable);
        assert_eq!(upstream.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(upstream.side(), Side::Upstream);
        assert!(
            upstream
                .body()
                .starts_with("502 Bad Gateway: backend a failed")
        );
        assert!(upstream.body().contains("not retried"));
    }

    #[test]
    fn statuses() {
        let none = ProxyError::new(ErrorKind::NoHealthyBackend { total: 3 });
        assert_eq!(none.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(none.body().contains("no healthy backend"));
        let slow = ProxyError::new(ErrorKind::Timeout {
            backend: "a".into(),
            timeout: Duration::from_secs(30),
        });
        assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
