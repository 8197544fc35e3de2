//! Server settings, separate from the command line so tests and other binaries can run
//! the server without going through clap.

/// What [`crate::server::run`] needs to know besides the listener.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Password every client must give (AUTH / HELLO AUTH) before other commands; `None`
    /// lets everyone in, like Redis without `requirepass`.
    pub requirepass: Option<String>,
    /// Connections served at once; more are answered `-ERR max number of clients reached`.
    pub max_connections: usize,
    /// Largest request accepted, in bytes. Checked against the announced lengths, so an
    /// oversized request is refused before its bytes are buffered.
    pub max_frame_bytes: usize,
    /// Active expiry cycles per second (Redis' `hz`).
    pub expiry_hz: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            requirepass: None,
            max_connections: 10_000,
            max_frame_bytes: 64 * 1024 * 1024,
            expiry_hz: 10,
        }
    }
}

/// Shows everything but the password, so logging a config cannot leak it.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "requirepass",
                &self.requirepass.as_ref().map(|_| "<redacted>"),
            )
            .field("max_connections", &self.max_connections)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("expiry_hz", &self.expiry_hz)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn debug_hides_the_password() {
        let config = Config {
            requirepass: Some("hunter2".into()),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
