//! AMQP errors as the protocol reports them: a reply code and text, the class and method
//! that failed, and whether the channel or the whole connection must close. Texts follow
//! RabbitMQ's (`NOT_FOUND - no queue 'q' in vhost '/'`) so clients and users see the same
//! words whichever broker they talk to.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::types::ShortString;

/// Reply codes of AMQP 0-9-1 used by this broker.
pub mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// Which scope an error closes: a soft error ends only its channel, a hard one the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Channel,
    Connection,
}

/// An error to report to the client with channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {text}")]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
    pub kind: ErrorKind,
}

impl AmqpError {
    /// A channel-scoped error; the method ids are filled in by [`AmqpError::during`].
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            kind: ErrorKind::Channel,
        }
    }

    /// A connection-scoped error.
    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            kind: ErrorKind::Connection,
            ..Self::channel(code, text)
        }
    }

    /// Records the method that failed, which close frames report back.
    pub fn during(mut self, method: &AMQPClass) -> Self {
        self.class_id = method.get_amqp_class_id();
        self.method_id = method.get_amqp_method_id();
        self
    }

    /// The reply text as a short string: one too long for that is cut to 252 bytes and
    /// "...", as RabbitMQ cuts it.
    pub fn reply_text(&self) -> ShortString {
        if self.text.len() <= amq_protocol::types::MAX_SHORT_STRING_LENGTH {
            return ShortString::from(self.text.as_str());
        }
        let mut end = 252;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        ShortString::from(format!("{}...", &self.text[..end]))
    }

    pub fn not_found(what: &str, name: &str, vhost: &str) -> Self {
        Self::channel(
            code::NOT_FOUND,
            format!("NOT_FOUND - no {what} '{name}' in vhost '{vhost}'"),
        )
    }

    pub fn precondition(text: impl std::fmt::Display) -> Self {
        Self::channel(
            code::PRECONDITION_FAILED,
            format!("PRECONDITION_FAILED - {text}"),
        )
    }

    pub fn access_refused(text: impl std::fmt::Display) -> Self {
        Self::channel(code::ACCESS_REFUSED, format!("ACCESS_REFUSED - {text}"))
    }

    pub fn inequivalent(
        arg: &str,
        what: &str,
        name: &str,
        vhost: &str,
        received: impl std::fmt::Display,
        current: impl std::fmt::Display,
    ) -> Self {
        Self::precondition(format_args!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
        ))
    }
}

/// A short string from any text, truncated on a character boundary to the 255 bytes the
/// type allows (`ShortString::from` panics on longer input).
pub fn short(text: &str) -> ShortString {
    let mut end = text.len().min(amq_protocol::types::MAX_SHORT_STRING_LENGTH);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let text = format!("{}é", "a".repeat(254));
        assert_eq!(short(&text).as_str().len(), 254);
        assert_eq!(short("ok").as_str(), "ok");
    }
}
