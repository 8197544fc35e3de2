//! Per-connection state that commands read and change.

use bytes::Bytes;

use crate::cmd::Run;
use crate::db::Db;
use crate::watch::Watches;

/// One client's session: who it is, whether it has authenticated, and its transaction.
pub(crate) struct Client {
    pub id: u64,
    pub name: Option<Bytes>,
    pub authenticated: bool,
    /// Set by MULTI, taken by EXEC or DISCARD.
    pub multi: Option<Multi>,
    pub watches: Watches,
}

/// A transaction being queued.
#[derive(Default)]
pub(crate) struct Multi {
    /// Each command checked (name, arity) and ready to run at EXEC.
    pub queued: Vec<(Run, Vec<Bytes>)>,
    /// A command was refused while queuing; EXEC will discard the whole transaction, as
    /// Redis does, rather than run part of what the client meant.
    pub refused: bool,
    /// Bytes of arguments queued, to bound what one connection can make the store hold.
    pub bytes: usize,
}

impl Client {
    /// A fresh connection's state; `db` is where its watches are kept.
    pub(crate) fn new(id: u64, authenticated: bool, db: Db) -> Client {
        Client {
            id,
            name: None,
            authenticated,
            multi: None,
            watches: Watches::new(db),
        }
    }
}
