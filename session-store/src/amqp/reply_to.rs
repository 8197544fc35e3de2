//! Direct reply-to: RabbitMQ's `amq.rabbitmq.reply-to` pseudo-queue, with which an RPC
//! client gets its replies without declaring a queue for them.
//!
//! The client consumes the pseudo-queue (no-ack only; one such consumer per channel) and
//! publishes requests with `reply-to: amq.rabbitmq.reply-to`. The broker rewrites that to
//! an address naming the channel, `amq.rabbitmq.reply-to.<suffix>`; a reply published to
//! the default exchange with the address as routing key goes straight to that consumer.
//! No queue holds replies: one whose channel is gone is dropped, as in RabbitMQ.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use amq_protocol::types::ShortString;
use tokio::sync::mpsc::error::TrySendError;

use super::broker::{ConnHandle, ConnId};
use super::codec::Outbound;

/// The pseudo-queue's name.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
const ADDRESS_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The suffix of a reply address, if `routing_key` is one.
pub fn suffix(routing_key: &str) -> Option<&str> {
    routing_key.strip_prefix(ADDRESS_PREFIX)
}

/// Whether a queue.declare of `name` is about the pseudo-queue or one of its addresses
/// (RabbitMQ answers those without looking at queues, passive or not).
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(PSEUDO_QUEUE)
}

/// A channel's consumer of the pseudo-queue.
#[derive(Debug)]
pub struct ReplyConsumer {
    pub tag: ShortString,
    /// Unique across the vhost's channels; the key of [`Replies`].
    pub suffix: String,
    /// Replies that found the connection's outbound queue full, sent in order once it has
    /// room (the connection's writer calls the broker's `resume`).
    held: VecDeque<Outbound>,
}

impl ReplyConsumer {
    pub fn new(tag: ShortString, suffix: String) -> Self {
        ReplyConsumer {
            tag,
            suffix,
            held: VecDeque::new(),
        }
    }

    /// The address requests carry as their reply-to.
    pub fn address(&self) -> String {
        format!("{ADDRESS_PREFIX}{}", self.suffix)
    }

    /// Sends a reply after any held ones; holds it while the outbound queue is full.
    pub fn send(&mut self, handle: &ConnHandle, reply: Outbound) {
        self.held.push_back(reply);
        self.flush(handle);
    }

    /// Sends held replies while the outbound queue has room.
    pub fn flush(&mut self, handle: &ConnHandle) {
        while let Some(reply) = self.held.pop_front() {
            match handle.tx.try_send(reply) {
                Ok(()) => {}
                Err(TrySendError::Full(reply)) => {
                    self.held.push_front(reply);
                    handle.congested.store(true, Ordering::Release);
                    return;
                }
                // The connection is going: its replies go with it.
                Err(TrySendError::Closed(_)) => {
                    self.held.clear();
                    return;
                }
            }
        }
    }
}

/// Which channel each live reply address belongs to.
pub type Replies = HashMap<String, (ConnId, u16)>;
