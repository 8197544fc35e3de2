//! Rebuilds the broker's durable exchanges, queues, bindings and messages from the state
//! the log replayed to, as RabbitMQ does on boot: messages come back in queue order, and
//! those that had been delivered without an ack come back marked redelivered.
//!
//! Exclusive queues are never logged (RabbitMQ deletes them with their connection, and
//! on restart), so they do not come back. Durable auto-delete queues do, with no
//! consumer history: like RabbitMQ they are deleted once a consumer comes and goes.

use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use super::super::broker::VHost;
use super::super::exchange::{Binding, Exchange, ExchangeKind};
use super::super::policy::Policy;
use super::super::queue::Queue;
use super::super::queue_args::QueueArgs;
use super::Journal;
use super::state::State;

/// Puts `state` into `vhost`; recovered queues log to `journal` from now on.
pub fn restore(vhost: &mut VHost, state: State, journal: &Journal) {
    let State {
        exchanges,
        queues,
        bindings,
        policies,
        messages,
        ..
    } = state;
    for ((kind, name), json) in policies {
        match serde_json::from_str(&json)
            .map_err(|e| e.to_string())
            .and_then(|body| Policy::parse_as(kind, &name, &body))
        {
            Ok(policy) => {
                vhost.policy_list(kind).set(policy);
            }
            Err(e) => warn!("amqp store: policy '{name}' not recovered: {e}"),
        }
    }
    for (name, def) in exchanges {
        let Some(kind) = ExchangeKind::parse(&def.kind) else {
            warn!(
                "amqp store: exchange '{name}' has unknown type '{}'; not recovered",
                def.kind
            );
            continue;
        };
        let mut x = Exchange::new(&name, kind);
        x.auto_delete = def.auto_delete;
        x.internal = def.internal;
        x.arguments = def.arguments;
        x.policy = vhost.policies.for_exchange(&name);
        vhost.exchanges.insert(name, x);
    }
    let now = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    for (name, def) in queues {
        let args = QueueArgs::parse(&def.arguments, &name, &vhost.name).unwrap_or_else(|e| {
            warn!("amqp store: queue '{name}' keeps its messages but not its arguments: {e}");
            QueueArgs::default()
        });
        let mut q = Queue::new(&name, true, None, def.auto_delete, def.arguments, args);
        q.journal = Some(journal.clone());
        let none_yet = q.set_policy(
            vhost.policies.for_queue(&name),
            vhost.operator_policies.for_queue(&name),
        );
        debug_assert!(none_yet.is_empty(), "an empty queue drops nothing");
        if q.stream.is_some() {
            let kept = def.messages.keys().filter_map(|id| {
                let m = messages.get(id)?;
                Some((m.message.clone(), m.published_ms))
            });
            q.restore_stream(def.first_offset, kept);
            q.retain(now_ms);
        } else {
            for (id, delivered) in def.messages {
                let Some(m) = messages.get(&id) else {
                    continue;
                };
                let age = Duration::from_millis(now_ms.saturating_sub(m.published_ms));
                let published = now.checked_sub(age).unwrap_or(now);
                q.restore(m.message.clone(), id, delivered, published);
            }
        }
        vhost.queues.insert(name.to_string(), q);
    }
    for b in bindings {
        let destination_exists = match &b.destination {
            super::super::exchange::Destination::Queue(q) => vhost.queues.contains_key(q),
            super::super::exchange::Destination::Exchange(x) => vhost.exchanges.contains_key(x),
        };
        if !destination_exists {
            continue;
        }
        if let Some(x) = vhost.exchanges.get_mut(&b.source) {
            x.bind(
                &b.key,
                Binding {
                    destination: b.destination,
                    arguments: b.arguments,
                },
            );
        }
    }
}

/// Milliseconds since the epoch (0 for a clock before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
