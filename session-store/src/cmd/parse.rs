//! A cursor over a command's arguments (after its name), with Redis' error for each way an
//! argument can be wrong.

use bytes::Bytes;

use crate::error::CommandError;
use crate::number::parse_i64;

/// The arguments not yet consumed. Arity is checked before a command runs, so a missing
/// argument here means a malformed option list: a syntax error, as in Redis.
pub(crate) struct Parse {
    args: std::vec::IntoIter<Bytes>,
}

impl Parse {
    /// Starts after the command name.
    pub(crate) fn new(args: Vec<Bytes>) -> Parse {
        let mut args = args.into_iter();
        args.next();
        Parse { args }
    }

    pub(crate) fn next(&mut self) -> Option<Bytes> {
        self.args.next()
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, CommandError> {
        self.next().ok_or(CommandError::Syntax)
    }

    pub(crate) fn integer(&mut self) -> Result<i64, CommandError> {
        parse_i64(&self.bytes()?).ok_or(CommandError::NotInteger)
    }

    /// Everything left, e.g. the keys of DEL.
    pub(crate) fn rest(&mut self) -> Vec<Bytes> {
        self.args.by_ref().collect()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.args.len()
    }

    /// Fails when arguments are left over.
    pub(crate) fn finish(&mut self) -> Result<(), CommandError> {
        match self.next() {
            None => Ok(()),
            Some(_) => Err(CommandError::Syntax),
        }
    }
}

/// The argument as an upper-case option name, for case-insensitive matching.
pub(crate) fn option(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}
