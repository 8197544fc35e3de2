//! A user's permissions in one vhost: three regular expressions, matched (unanchored, as
//! RabbitMQ's `re:run` does) against the names of the queues and exchanges an operation
//! configures, writes to or reads from. Which operation needs which is RabbitMQ's table:
//!
//! | operation | configure | write | read |
//! | --- | --- | --- | --- |
//! | exchange.declare, exchange.delete | exchange | | |
//! | queue.declare, queue.delete | queue | | |
//! | queue.declare with a dead-letter exchange | queue | exchange (DLX) | queue |
//! | exchange.bind / unbind | | destination exchange | source exchange |
//! | queue.bind / unbind | | queue | exchange |
//! | basic.publish | | exchange | |
//! | basic.get, basic.consume, queue.purge | | | queue |
//!
//! Passive declarations need no permission.

use amq_protocol::types::{AMQPValue, FieldTable};
use regex::Regex;

use super::error::AmqpError;

/// Which of the three permissions an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

/// The kind of resource a permission is checked on, for error texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Queue,
    Exchange,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

/// The configure, write and read expressions, as given (for listing) and compiled.
#[derive(Debug, Clone)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
    compiled: [Regex; 3],
}

impl Permissions {
    /// Compiles the three expressions; an empty one matches nothing (RabbitMQ reads it as
    /// `^$`).
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        let compile = |re: &str| Regex::new(if re.is_empty() { "^$" } else { re });
        Ok(Permissions {
            compiled: [compile(configure)?, compile(write)?, compile(read)?],
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        })
    }

    /// Nothing at all: what is left to a connection whose user lost its permissions in
    /// the vhost while connected (every check refused, as RabbitMQ refuses them).
    pub fn none() -> Self {
        let never = Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!("a valid expression"));
        Permissions {
            compiled: [never.clone(), never.clone(), never],
            configure: String::new(),
            write: String::new(),
            read: String::new(),
        }
    }

    /// Everything: `.*` for all three.
    pub fn all() -> Self {
        let any = Regex::new(".*").unwrap_or_else(|_| unreachable!("a valid expression"));
        Permissions {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
            compiled: [any.clone(), any.clone(), any],
        }
    }

    /// Whether `perm` is granted on the resource called `name`. The default exchange is
    /// checked under its RabbitMQ name, `amq.default`.
    pub fn allows(&self, perm: Perm, resource: Resource, name: &str) -> bool {
        let re = match perm {
            Perm::Configure => &self.compiled[0],
            Perm::Write => &self.compiled[1],
            Perm::Read => &self.compiled[2],
        };
        re.is_match(resource_name(resource, name))
    }

    /// [`Permissions::allows`] as RabbitMQ reports a refusal: 403 ACCESS_REFUSED, closing
    /// the channel.
    pub fn check(
        &self,
        perm: Perm,
        resource: Resource,
        name: &str,
        vhost: &str,
        user: &str,
    ) -> Result<(), AmqpError> {
        if self.allows(perm, resource, name) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format_args!(
            "access to {} '{}' in vhost '{vhost}' refused for user '{user}'",
            resource.as_str(),
            resource_name(resource, name)
        )))
    }

    /// queue.declare's permissions, on the final (perhaps generated) name, as RabbitMQ
    /// checks them: configure, and with a dead-letter exchange read on the queue and
    /// write on that exchange.
    pub fn check_declare(
        &self,
        queue: &str,
        arguments: &FieldTable,
        vhost: &str,
        user: &str,
    ) -> Result<(), AmqpError> {
        self.check(Perm::Configure, Resource::Queue, queue, vhost, user)?;
        if let Some(AMQPValue::LongString(dlx)) = arguments.inner().get("x-dead-letter-exchange") {
            self.check(Perm::Read, Resource::Queue, queue, vhost, user)?;
            let dlx = String::from_utf8_lossy(dlx.as_bytes());
            self.check(Perm::Write, Resource::Exchange, &dlx, vhost, user)?;
        }
        Ok(())
    }
}

/// A topic permission: on one topic exchange, the routing keys a user may publish with
/// (`write`) and bind with (`read`), as RabbitMQ's topic authorisation checks them. A
/// user with none on an exchange is not restricted there. `{username}` and `{vhost}` in
/// a pattern stand for the user's and the vhost's names.
#[derive(Debug, Clone)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: String,
    pub read: String,
    compiled: [Regex; 2],
}

impl TopicPermission {
    /// Compiles the two expressions for `user` in `vhost`; an empty one matches nothing.
    pub fn new(
        exchange: &str,
        write: &str,
        read: &str,
        user: &str,
        vhost: &str,
    ) -> Result<Self, regex::Error> {
        let compile = |re: &str| {
            let expanded = re
                .replace("{username}", &regex::escape(user))
                .replace("{vhost}", &regex::escape(vhost));
            Regex::new(if expanded.is_empty() { "^$" } else { &expanded })
        };
        Ok(TopicPermission {
            compiled: [compile(write)?, compile(read)?],
            exchange: exchange.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        })
    }

    /// Whether a routing key may be used to publish (`Perm::Write`) or bind
    /// (`Perm::Read`); 403 with RabbitMQ's text when not.
    pub fn check(&self, perm: Perm, key: &str, vhost: &str, user: &str) -> Result<(), AmqpError> {
        let re = if perm == Perm::Write {
            &self.compiled[0]
        } else {
            &self.compiled[1]
        };
        if re.is_match(key) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format_args!(
            "access to topic '{key}' in exchange '{}' in vhost '{vhost}' refused for user '{user}'",
            self.exchange
        )))
    }
}

fn resource_name(resource: Resource, name: &str) -> &str {
    if resource == Resource::Exchange && name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_allows_nothing() {
        let none = Permissions::none();
        for perm in [Perm::Configure, Perm::Write, Perm::Read] {
            for name in ["", "q", "amq.gen-1", ".*"] {
                assert!(!none.allows(perm, Resource::Queue, name), "{name}");
                assert!(!none.allows(perm, Resource::Exchange, name), "{name}");
            }
        }
    }

    #[test]
    fn expressions_match_unanchored_and_empty_matches_nothing() {
        let p = Permissions::new("^app\\.", "", "events").expect("valid");
        assert!(p.allows(Perm::Configure, Resource::Queue, "app.q"));
        assert!(!p.allows(Perm::Configure, Resource::Queue, "other.app.q"));
        assert!(!p.allows(Perm::Write, Resource::Exchange, ""));
        assert!(!p.allows(Perm::Write, Resource::Exchange, "x"));
        assert!(p.allows(Perm::Read, Resource::Queue, "my-events-1"));
        assert!(Permissions::all().allows(Perm::Write, Resource::Exchange, ""));
        assert!(Permissions::new("(", "", "").is_err());
    }

    #[test]
    fn refusals_use_rabbitmq_texts() {
        let p = Permissions::new("", "^amq\\.default$", "").expect("valid");
        assert!(
            p.check(Perm::Write, Resource::Exchange, "", "/", "u")
                .is_ok()
        );
        let e = p
            .check(Perm::Read, Resource::Queue, "q", "/", "u")
            .expect_err("refused");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
        );
        let e = Permissions::new("", "", "")
            .expect("valid")
            .check(Perm::Write, Resource::Exchange, "", "v", "u")
            .expect_err("refused");
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost 'v' refused for user 'u'"
        );
    }
}
