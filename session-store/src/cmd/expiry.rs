//! Redis' rules for turning an expire argument (EX, PX, EXAT, PXAT, EXPIRE, PEXPIRE) into
//! a deadline, including which values count as "invalid expire time".

use crate::db::{Deadline, unix_now_millis};
use crate::error::CommandError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    Seconds,
    Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Base {
    /// From now (EX, PX, EXPIRE, PEXPIRE).
    Relative,
    /// Since the Unix epoch (EXAT, PXAT).
    Absolute,
}

/// SET's (and SETEX's, PSETEX's) times must be positive; a past absolute time is allowed
/// and deletes the key.
pub(super) fn for_set(
    raw: i64,
    unit: Unit,
    base: Base,
    command: &'static str,
) -> Result<Deadline, CommandError> {
    let invalid = CommandError::InvalidExpireTime(command);
    if raw <= 0 || (unit == Unit::Seconds && raw > i64::MAX / 1000) {
        return Err(invalid);
    }
    deadline(to_millis(raw, unit).ok_or(invalid.clone())?, base).ok_or(invalid)
}

/// EXPIRE / PEXPIRE take any time; zero or negative deletes the key.
pub(super) fn for_expire(
    raw: i64,
    unit: Unit,
    command: &'static str,
) -> Result<Deadline, CommandError> {
    to_millis(raw, unit)
        .and_then(|ms| deadline(ms, Base::Relative))
        .ok_or(CommandError::InvalidExpireTime(command))
}

fn to_millis(raw: i64, unit: Unit) -> Option<i64> {
    match unit {
        Unit::Seconds => raw.checked_mul(1000),
        Unit::Millis => Some(raw),
    }
}

/// `None` where Redis' absolute time in milliseconds would overflow.
fn deadline(ms: i64, base: Base) -> Option<Deadline> {
    match base {
        Base::Relative => {
            unix_now_millis().checked_add(ms)?;
            Deadline::after_millis(ms)
        }
        Base::Absolute => Deadline::at_unix_millis(ms),
    }
}
