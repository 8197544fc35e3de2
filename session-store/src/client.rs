//! Per-connection state that commands read and change.

use bytes::Bytes;

/// One client's session: who it is and whether it has authenticated.
#[derive(Debug)]
pub(crate) struct Client {
    pub id: u64,
    pub name: Option<Bytes>,
    pub authenticated: bool,
}
