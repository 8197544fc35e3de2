//! Transactions (tx.select / tx.commit / tx.rollback), RabbitMQ style: on a
//! transactional channel, publishes wait in the channel until commit and acks, nacks and
//! rejects are held by the broker (see `Broker::ack`) until then; rollback discards the
//! publishes and hands the acknowledged deliveries back as unacknowledged. A channel is
//! either transactional or in confirm mode, never both.

use amq_protocol::protocol::basic;

use super::error::AmqpError;
use super::queue::Message;

/// A publish received inside a transaction, routed only at commit.
#[derive(Debug)]
pub struct BufferedPublish {
    pub publish: basic::Publish,
    pub message: Message,
}

/// The publishing mode of a channel: plain, publisher confirms, or transactional with the
/// publishes buffered so far.
#[derive(Debug, Default)]
pub enum Mode {
    #[default]
    Plain,
    Confirm,
    Tx(Vec<BufferedPublish>),
}

impl Mode {
    /// confirm.select: refused on a transactional channel.
    pub fn select_confirm(&mut self) -> Result<(), AmqpError> {
        match self {
            Mode::Tx(_) => Err(AmqpError::precondition(
                "cannot switch from tx to confirm mode",
            )),
            _ => {
                *self = Mode::Confirm;
                Ok(())
            }
        }
    }

    /// tx.select: refused in confirm mode; selecting twice keeps what is buffered.
    pub fn select_tx(&mut self) -> Result<(), AmqpError> {
        match self {
            Mode::Confirm => Err(AmqpError::precondition(
                "cannot switch from confirm to tx mode",
            )),
            Mode::Tx(_) => Ok(()),
            Mode::Plain => {
                *self = Mode::Tx(Vec::new());
                Ok(())
            }
        }
    }

    /// The publishes to route on commit (or drop on rollback); the channel stays
    /// transactional.
    pub fn take_buffered(&mut self) -> Result<Vec<BufferedPublish>, AmqpError> {
        match self {
            Mode::Tx(buffered) => Ok(std::mem::take(buffered)),
            _ => Err(not_transactional()),
        }
    }

    pub fn is_confirm(&self) -> bool {
        matches!(self, Mode::Confirm)
    }

    /// Buffers a publish if the channel is transactional, else gives it back.
    pub fn buffer(&mut self, p: BufferedPublish) -> Option<BufferedPublish> {
        match self {
            Mode::Tx(buffered) => {
                buffered.push(p);
                None
            }
            _ => Some(p),
        }
    }
}

pub fn not_transactional() -> AmqpError {
    AmqpError::precondition("channel is not transactional")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_and_confirm_exclude_each_other() {
        let mut m = Mode::default();
        assert!(m.take_buffered().is_err(), "commit without select");
        m.select_tx().expect("select");
        assert_eq!(
            m.select_confirm().map_err(|e| e.text),
            Err("PRECONDITION_FAILED - cannot switch from tx to confirm mode".into())
        );
        let mut c = Mode::default();
        c.select_confirm().expect("confirm");
        assert!(c.select_tx().is_err());
        assert!(c.is_confirm());
    }

    #[test]
    fn buffered_publishes_are_taken_once() {
        let mut m = Mode::default();
        let p = || BufferedPublish {
            publish: basic::Publish::default(),
            message: Message::new(
                "".into(),
                "q".into(),
                Default::default(),
                Default::default(),
            ),
        };
        assert!(m.buffer(p()).is_some(), "plain channels do not buffer");
        m.select_tx().expect("select");
        assert!(m.buffer(p()).is_none());
        assert!(m.buffer(p()).is_none());
        assert_eq!(m.take_buffered().expect("commit").len(), 2);
        assert!(m.take_buffered().expect("rollback").is_empty());
    }
}
