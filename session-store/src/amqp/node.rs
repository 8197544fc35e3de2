//! The whole broker process: its vhosts (each a [`Broker`] of its own, sharing only the
//! memory watermark), the users who may open them, the open connections and the
//! sampled message rates the management API reports. With a data directory, it holds
//! the directory's lock and each vhost's journal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::{Instant, SystemTime};

use amq_protocol::protocol::{exchange, queue};
use amq_protocol::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::AmqpConfig;
use super::access;
use super::auth_attempts::AuthAttempts;
use super::broker::{Broker, ConnId, VHostInfo};
use super::churn::{self, Churn};
use super::definitions::{Definitions, DefinitionsError};
use super::error::{AmqpError, code, short};
use super::exchange::Destination;
use super::flow::MemoryMonitor;
use super::globals::{self, Globals};
use super::limits::Limits;
use super::permissions::{Permissions, TopicPermission};
use super::stats::{MessageStats, Rates, Sampler};
use super::store::{self, DataDir, Journal, StoreError};
use super::tls::{CertFiles, TlsInfo};
use super::users::{User, Users};
use super::vhost_meta::VHostMeta;

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
}

/// The node's name, as RabbitMQ names nodes `name@host`; the cluster's name until one is
/// set.
pub const NODE_NAME: &str = "session-store@localhost";

/// An open connection as the management API lists it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: ConnId,
    pub user: String,
    pub vhost: String,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// The client's start-ok properties (product, version, capabilities, ...).
    pub client_properties: FieldTable,
    /// The client's `connection_name` property (RabbitMQ's `user_provided_name`).
    pub client_name: Option<String>,
    /// The SASL mechanism it logged in with.
    pub mechanism: &'static str,
    /// The TLS session, for a client of the amqps listener.
    pub tls: Option<Arc<TlsInfo>>,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    /// Cancelled to close the connection from outside (the management API), after the
    /// reason is set.
    pub force_close: ForceClose,
}

/// A request to close one connection with CONNECTION_FORCED and a reason of the
/// requester's, as RabbitMQ's management plugin does.
#[derive(Debug, Clone)]
pub struct ForceClose {
    pub token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl ForceClose {
    /// Cancelled by `token` (shutdown) or by [`ForceClose::close`].
    pub fn new(token: CancellationToken) -> Self {
        ForceClose {
            token,
            reason: Arc::new(OnceLock::new()),
        }
    }

    /// Starts the close; the first reason given is the one sent.
    pub fn close(&self, reason: &str) {
        let _ = self.reason.set(reason.to_string());
        self.token.cancel();
    }

    /// The reason, if the close was asked for.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

impl ConnInfo {
    /// RabbitMQ's connection name: `peer -> local`.
    pub fn name(&self) -> String {
        connection_name(self.peer, self.local)
    }
}

/// RabbitMQ's name of a connection from `peer` to `local`: `peer -> local`.
pub fn connection_name(peer: Option<SocketAddr>, local: Option<SocketAddr>) -> String {
    let addr = |a: Option<SocketAddr>| a.map_or_else(|| "?".to_string(), |a| a.to_string());
    format!("{} -> {}", addr(peer), addr(local))
}

/// The vhosts, users, connections and rates of one broker.
#[derive(Debug)]
pub struct Node {
    config: AmqpConfig,
    memory: Arc<MemoryMonitor>,
    vhosts: RwLock<BTreeMap<String, Arc<Broker>>>,
    /// Who may connect, and what they may do where; changed by the management API.
    users: RwLock<Users>,
    /// Node-wide settings such as the cluster's name; changed by the management API.
    globals: RwLock<Globals>,
    /// Serialises changes of users, vhosts and permissions with their saving.
    admin: Mutex<()>,
    /// Bumped by every change of permissions, so open connections look theirs up again
    /// (RabbitMQ applies a change to connections already open).
    permissions_changed: AtomicU64,
    /// The data directory's lock, held for the node's life; none without persistence.
    data: Option<DataDir>,
    /// Every vhost's journal, to be closed on shutdown.
    journals: Mutex<BTreeMap<String, Journal>>,
    next_conn: AtomicU64,
    connections: Mutex<BTreeMap<ConnId, ConnInfo>>,
    rates: Mutex<Sampler>,
    /// The addresses its servers listen on, by protocol (`amqp`, `http`), as they bound.
    listeners: Mutex<Vec<(&'static str, SocketAddr)>>,
    /// The amqps listener's address and certificate files, for the expiry check.
    tls_listener: Mutex<Option<(SocketAddr, CertFiles)>>,
    started: Instant,
    /// Logins tried, per protocol.
    auth_attempts: AuthAttempts,
    /// Connections, channels and queues opened and closed.
    churn: Arc<Churn>,
}

/// The sampler's key for the node's totals.
const OVERVIEW: &str = "overview";

impl Node {
    /// Creates the configured vhosts, recovers the durable state of each from its journal
    /// in the data directory (locking the directory first), then declares the
    /// definitions' policies, exchanges, queues and bindings, which are journaled like any
    /// others.
    /// Reads the disk: in async code, prefer [`Node::open`].
    pub fn new(config: AmqpConfig) -> Result<Arc<Self>, NodeError> {
        let memory = Arc::new(MemoryMonitor::new(config.memory_high_watermark));
        let data = config.data_dir.as_deref().map(DataDir::lock).transpose()?;
        let access::Access {
            users,
            vhosts: vhost_names,
            vhost_meta,
            mut globals,
        } = access::starting(&config.definitions, data.as_ref())?;
        let id = globals::cluster_id(data.as_ref().map(DataDir::root))?;
        globals.set(globals::CLUSTER_ID, serde_json::json!(id));
        let node = Node {
            memory,
            vhosts: RwLock::new(BTreeMap::new()),
            users: RwLock::new(users),
            globals: RwLock::new(globals),
            admin: Mutex::new(()),
            permissions_changed: AtomicU64::new(1),
            data,
            journals: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            connections: Mutex::new(BTreeMap::new()),
            rates: Mutex::new(Sampler::default()),
            listeners: Mutex::new(Vec::new()),
            tls_listener: Mutex::new(None),
            started: Instant::now(),
            auth_attempts: AuthAttempts::default(),
            churn: Arc::default(),
            config,
        };
        for name in &vhost_names {
            match node.open_vhost(name) {
                Ok(broker) => broker.set_meta(vhost_meta.get(name).cloned().unwrap_or_default()),
                Err(e) => {
                    node.close_journals();
                    return Err(e.into());
                }
            }
        }
        if let Err(e) = node.settle_definitions() {
            node.close_journals();
            return Err(e);
        }
        Ok(Arc::new(node))
    }

    /// Creates the vhost `name`, recovering its durable state if the data directory has
    /// some. Reads the disk.
    fn open_vhost(&self, name: &str) -> Result<Arc<Broker>, StoreError> {
        let broker = Broker::new(name, self.memory.clone(), self.churn.clone());
        if let Some(data) = &self.data {
            let (journal, state) = store::open(&data.vhost(name), &self.memory.counter())?;
            broker.restore_durable(journal.clone(), state);
            lock(&self.journals).insert(name.to_string(), journal);
        }
        let broker = Arc::new(broker);
        write(&self.vhosts).insert(name.to_string(), broker.clone());
        Ok(broker)
    }

    /// Reports data of vhosts no longer defined, then declares the definitions' topology.
    fn settle_definitions(&self) -> Result<(), NodeError> {
        if let Some(data) = &self.data {
            data.warn_unknown(&self.vhost_names())?;
        }
        self.declare(&self.config.definitions, false)?;
        Ok(())
    }

    /// [`Node::new`] on a blocking thread, as recovering a large log takes a while.
    pub async fn open(config: AmqpConfig) -> Result<Arc<Self>, NodeError> {
        let dir = config.data_dir.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || Node::new(config))
            .await
            .map_err(|e| StoreError::Io {
                path: dir,
                source: std::io::Error::other(e),
            })?
    }

    /// Writes out what the journals hold and stops their writers; anything logged after
    /// this is lost. Blocks: call it from a blocking context.
    pub fn close_journals(&self) {
        for journal in lock(&self.journals).values() {
            journal.close();
        }
    }

    fn declare(&self, d: &Definitions, keep_existing: bool) -> Result<(), DefinitionsError> {
        let fail = |what: String, e: super::error::AmqpError| {
            DefinitionsError::Apply(format!("{what}: {}", e.text))
        };
        let broker = |vhost: &str| {
            self.vhost(vhost)
                .ok_or_else(|| DefinitionsError::Apply(format!("vhost '{vhost}' is not defined")))
        };
        for (vhost, policy) in &d.policies {
            broker(vhost)?.set_policy(policy.clone());
        }
        for x in &d.exchanges {
            if keep_existing && broker(&x.vhost)?.exchange_kind(&x.name).is_some() {
                continue;
            }
            let declare = exchange::Declare {
                exchange: short(&x.name),
                kind: short(x.kind.as_str()),
                passive: false,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                nowait: false,
                arguments: x.arguments.clone(),
            };
            broker(&x.vhost)?
                .exchange_declare(&declare)
                .map_err(|e| fail(format!("exchange '{}'", x.name), e))?;
        }
        for q in &d.queues {
            if keep_existing && broker(&q.vhost)?.has_queue(&q.name) {
                continue;
            }
            let declare = queue::Declare {
                queue: short(&q.name),
                passive: false,
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                nowait: false,
                arguments: q.arguments.clone(),
            };
            broker(&q.vhost)?
                .queue_declare(0, &declare, None, |_| Ok(()))
                .map_err(|e| fail(format!("queue '{}'", q.name), e))?;
        }
        for b in &d.bindings {
            let destination = if b.to_exchange {
                Destination::Exchange(b.destination.clone())
            } else {
                Destination::Queue(b.destination.clone())
            };
            broker(&b.vhost)?
                .bind(
                    0,
                    &b.source,
                    destination,
                    &b.routing_key,
                    &b.arguments,
                    false,
                )
                .map_err(|e| {
                    fail(
                        format!("binding from '{}' to '{}'", b.source, b.destination),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Counts changes of permissions (from 1): a connection that saw another count looks
    /// its permissions up again.
    pub fn permissions_generation(&self) -> u64 {
        self.permissions_changed.load(Ordering::Acquire)
    }

    /// Tells open connections that permissions changed, then writes users, vhosts and
    /// permissions to the data directory, if there is one.
    fn save_access(&self) -> Result<(), StoreError> {
        self.permissions_changed.fetch_add(1, Ordering::AcqRel);
        let Some(data) = &self.data else {
            return Ok(());
        };
        let meta = self
            .vhosts()
            .iter()
            .map(|v| (v.name().to_string(), v.meta()))
            .collect();
        access::save(
            data,
            &read(&self.users),
            &self.vhost_names(),
            &meta,
            &read(&self.globals),
        )
    }

    /// Adds or replaces a user; true if one of that name existed. Writes the disk.
    pub fn put_user(&self, user: User) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        let mut users = write(&self.users);
        let existed = users.get(&user.name).is_some();
        users.add(user);
        drop(users);
        self.save_access()?;
        Ok(existed)
    }

    /// Removes a user and its permissions, and closes its connections (CONNECTION_FORCED)
    /// as RabbitMQ does; false if there was none. Writes the disk.
    pub fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if !write(&self.users).remove(name) {
            return Ok(false);
        }
        for c in self.conns().values().filter(|c| c.user == name) {
            c.force_close.close(&format!("user '{name}' is deleted"));
        }
        self.save_access()?;
        Ok(true)
    }

    /// The global parameters, as they are now.
    pub fn globals(&self) -> Globals {
        read(&self.globals).clone()
    }

    /// The cluster's name: the one set, or the node's.
    pub fn cluster_name(&self) -> String {
        read(&self.globals)
            .cluster_name()
            .unwrap_or(NODE_NAME)
            .to_string()
    }

    /// Sets a global parameter; true if it was set before. Writes the disk.
    pub fn set_global(&self, name: &str, value: serde_json::Value) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        let existed = write(&self.globals).set(name, value);
        self.save_access()?;
        Ok(existed)
    }

    /// Clears a global parameter; false if it was not set. Writes the disk.
    pub fn clear_global(&self, name: &str) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if !write(&self.globals).remove(name) {
            return Ok(false);
        }
        self.save_access()?;
        Ok(true)
    }

    /// Deletes the users `names` in order, closing their connections, up to the first
    /// that does not exist, which is returned (RabbitMQ's bulk delete stops there too);
    /// one write of the data directory for all.
    pub fn delete_users(&self, names: &[String]) -> Result<Option<String>, StoreError> {
        let _admin = lock(&self.admin);
        let mut deleted = Vec::new();
        let mut missing = None;
        {
            let mut users = write(&self.users);
            for name in names {
                if !users.remove(name) {
                    missing = Some(name.clone());
                    break;
                }
                deleted.push(name.as_str());
            }
        }
        if deleted.is_empty() {
            return Ok(missing);
        }
        for c in self
            .conns()
            .values()
            .filter(|c| deleted.contains(&c.user.as_str()))
        {
            c.force_close
                .close(&format!("user '{}' is deleted", c.user));
        }
        self.save_access()?;
        Ok(missing)
    }

    /// Grants `user` `permissions` in `vhost`: Some(whether it had some), or None when
    /// the user or the vhost does not exist. Open connections get them on their next frame.
    pub fn put_permissions(
        &self,
        user: &str,
        vhost: &str,
        permissions: Permissions,
    ) -> Result<Option<bool>, StoreError> {
        self.grant_to_existing(user, vhost, |users| {
            let existed = users.permissions(user, vhost).is_some();
            users.grant(user, vhost, permissions);
            existed
        })
    }

    /// Sets `user`'s topic permission in `vhost` on its exchange: Some(whether the user
    /// had any topic permission there), or None when the user or the vhost does not
    /// exist.
    pub fn put_topic_permission(
        &self,
        user: &str,
        vhost: &str,
        permission: TopicPermission,
    ) -> Result<Option<bool>, StoreError> {
        self.grant_to_existing(user, vhost, |users| {
            let had = !users.topic_permissions(user, vhost).is_empty();
            users.grant_topic(user, vhost, permission);
            had
        })
    }

    /// Runs `grant` on the users if both `user` and `vhost` exist (None otherwise), then
    /// saves; returns what `grant` said.
    fn grant_to_existing(
        &self,
        user: &str,
        vhost: &str,
        grant: impl FnOnce(&mut Users) -> bool,
    ) -> Result<Option<bool>, StoreError> {
        let _admin = lock(&self.admin);
        let vhost_exists = self.vhost(vhost).is_some();
        let mut users = write(&self.users);
        if users.get(user).is_none() || !vhost_exists {
            return Ok(None);
        }
        let had = grant(&mut users);
        drop(users);
        self.save_access()?;
        Ok(Some(had))
    }

    /// Removes `user`'s topic permissions in `vhost`; false if it had none.
    pub fn delete_topic_permissions(&self, user: &str, vhost: &str) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if !write(&self.users).revoke_topic(user, vhost, None) {
            return Ok(false);
        }
        self.save_access()?;
        Ok(true)
    }

    /// Revokes `user`'s permissions in `vhost`; false if it had none.
    pub fn delete_permissions(&self, user: &str, vhost: &str) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if !write(&self.users).revoke(user, vhost) {
            return Ok(false);
        }
        self.save_access()?;
        Ok(true)
    }

    /// Imports definitions sent through the management API over what the node has, as
    /// RabbitMQ's import does: vhosts it lacks are created (`creator` gets every
    /// permission there), users, permissions and limits added or replaced, policies set,
    /// and exchanges, queues and bindings declared where missing (one that exists stays
    /// as it is, even where the file describes it otherwise). Writes the disk: call it
    /// from a blocking context.
    pub fn import(&self, d: &Definitions, creator: &str) -> Result<(), NodeError> {
        {
            let _admin = lock(&self.admin);
            for name in &d.vhosts {
                let meta = d.vhost_meta.get(name).cloned();
                match self.vhost(name) {
                    None => {
                        self.open_vhost(name)?.set_meta(meta.unwrap_or_default());
                        write(&self.users).grant(creator, name, Permissions::all());
                    }
                    // As RabbitMQ's import: an existing vhost takes the file's
                    // description and tags, and keeps its default queue type.
                    Some(broker) => {
                        if let Some(meta) = meta {
                            broker.set_meta(VHostMeta {
                                default_queue_type: broker.meta().default_queue_type,
                                ..meta
                            });
                        }
                    }
                }
            }
            write(&self.users).merge(&d.users);
            write(&self.globals).merge(&d.globals);
            self.save_access()?;
        }
        self.declare(d, true)?;
        Ok(())
    }

    /// Sets (`Some`) or clears one of `user`'s limits; false if there is no such user.
    /// Writes the disk.
    pub fn set_user_limit(
        &self,
        user: &str,
        name: &str,
        value: Option<i64>,
    ) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        let mut users = write(&self.users);
        if users.get(user).is_none() {
            return Ok(false);
        }
        let limits = changed(users.user_limits(user), name, value);
        users.set_user_limits(user, limits);
        drop(users);
        self.save_access()?;
        Ok(true)
    }

    /// Sets (`Some`) or clears one of `vhost`'s limits; false if there is no such vhost.
    /// Writes the disk.
    pub fn set_vhost_limit(
        &self,
        vhost: &str,
        name: &str,
        value: Option<i64>,
    ) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if self.vhost(vhost).is_none() {
            return Ok(false);
        }
        let mut users = write(&self.users);
        let limits = changed(users.vhost_limits(vhost), name, value);
        users.set_vhost_limits(vhost, limits);
        drop(users);
        self.save_access()?;
        Ok(true)
    }

    /// Replaces all of `vhost`'s limits (none: clears them): Some(whether it had some),
    /// or None when there is no such vhost. Writes the disk.
    pub fn replace_vhost_limits(
        &self,
        vhost: &str,
        limits: Limits,
    ) -> Result<Option<bool>, StoreError> {
        let _admin = lock(&self.admin);
        if self.vhost(vhost).is_none() {
            return Ok(None);
        }
        let mut users = write(&self.users);
        let had = !users.vhost_limits(vhost).is_empty();
        users.set_vhost_limits(vhost, limits);
        drop(users);
        self.save_access()?;
        Ok(Some(had))
    }

    /// The connection limits of `vhost` and of `user`, checked as RabbitMQ checks them
    /// at connection.open (after the vhost access check), with its 530 texts. Counted
    /// against the connections already open.
    pub fn admit_connection(&self, user: &str, vhost: &str) -> Result<(), AmqpError> {
        let users = self.users();
        let per_vhost = users.vhost_limit(vhost, "max-connections");
        let per_user = users.user_limit(user, "max-connections");
        drop(users);
        if per_vhost.is_none() && per_user.is_none() {
            return Ok(());
        }
        let conns = self.conns();
        let count = |mine: &dyn Fn(&ConnInfo) -> bool| {
            u64::try_from(conns.values().filter(|c| mine(c)).count()).unwrap_or(u64::MAX)
        };
        if let Some(max) = per_vhost
            && count(&|c| c.vhost == vhost) >= max
        {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}': connection limit ({max}) is reached"
                ),
            ));
        }
        if let Some(max) = per_user
            && count(&|c| c.user == user) >= max
        {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - connection refused for user '{user}': user connection limit ({max}) is reached"
                ),
            ));
        }
        Ok(())
    }

    /// `user`'s channel limit, over all its connections, checked at channel.open as
    /// RabbitMQ checks it (530, closing the connection).
    pub fn admit_channel(&self, user: &str) -> Result<(), AmqpError> {
        let Some(max) = self.users().user_limit(user, "max-channels") else {
            return Ok(());
        };
        let theirs: Vec<ConnId> = self
            .conns()
            .values()
            .filter(|c| c.user == user)
            .map(|c| c.id)
            .collect();
        let open = self
            .vhosts()
            .iter()
            .flat_map(|v| v.channels())
            .filter(|c| theirs.contains(&c.conn))
            .count();
        if u64::try_from(open).unwrap_or(u64::MAX) >= max {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                ),
            ));
        }
        Ok(())
    }

    /// `vhost`'s queue limit, if it has one.
    pub fn max_queues(&self, vhost: &str) -> Option<u64> {
        self.users().vhost_limit(vhost, "max-queues")
    }

    /// Whether the data directory (if any) can hold a vhost of this name.
    pub fn vhost_name_fits(&self, name: &str) -> bool {
        self.data.as_ref().is_none_or(|data| data.fits(name))
    }

    /// Creates the vhost `name` (if new) with `meta` and, as RabbitMQ's management API
    /// does, gives `creator` every permission there; true if it existed. Reads and writes the disk:
    /// call it from a blocking context.
    pub fn add_vhost(
        &self,
        name: &str,
        creator: &str,
        meta: VHostMeta,
    ) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if let Some(broker) = self.vhost(name) {
            // As RabbitMQ: an existing vhost takes the description and tags, and keeps
            // the default queue type it was made with.
            broker.set_meta(VHostMeta {
                default_queue_type: broker.meta().default_queue_type,
                ..meta
            });
            self.save_access()?;
            return Ok(true);
        }
        self.open_vhost(name)?.set_meta(meta);
        write(&self.users).grant(creator, name, Permissions::all());
        self.save_access()?;
        Ok(false)
    }

    /// Deletes the vhost `name` with everything in it, as RabbitMQ does: its connections
    /// are closed (CONNECTION_FORCED), its permissions revoked and its data directory
    /// removed. False if there was none. Blocks on its journal: call it from a blocking
    /// context.
    pub fn delete_vhost(&self, name: &str) -> Result<bool, StoreError> {
        let _admin = lock(&self.admin);
        if write(&self.vhosts).remove(name).is_none() {
            return Ok(false);
        }
        for c in self.conns().values().filter(|c| c.vhost == name) {
            c.force_close.close(&format!("vhost '{name}' is deleted"));
        }
        write(&self.users).revoke_all(name);
        if let Some(journal) = lock(&self.journals).remove(name) {
            journal.close();
        }
        if let Some(data) = &self.data {
            let dir = data.vhost(name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            }
        }
        self.save_access()?;
        Ok(true)
    }

    /// Logins tried, per protocol.
    pub fn auth_attempts(&self) -> &AuthAttempts {
        &self.auth_attempts
    }

    /// How long the node has run.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// Bytes of the messages held (queued, on their way to consumers, or awaiting acks):
    /// what the memory watermark counts.
    pub fn held_bytes(&self) -> u64 {
        self.memory.used()
    }

    /// The users and their permissions as they are now.
    pub fn users(&self) -> RwLockReadGuard<'_, Users> {
        read(&self.users)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Broker>> {
        read(&self.vhosts).get(name).cloned()
    }

    /// Every vhost's name, in order.
    pub fn vhost_names(&self) -> Vec<String> {
        read(&self.vhosts).keys().cloned().collect()
    }

    /// Every vhost, by name.
    pub fn vhosts(&self) -> Vec<Arc<Broker>> {
        read(&self.vhosts).values().cloned().collect()
    }

    /// A connection id unique across the node's vhosts.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn conns(&self) -> MutexGuard<'_, BTreeMap<ConnId, ConnInfo>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists a connection that opened its vhost.
    pub fn connection_opened(&self, info: ConnInfo) {
        self.conns().insert(info.id, info);
        self.churn.count(churn::Event::ConnectionCreated);
    }

    pub fn connection_closed(&self, id: ConnId) {
        if self.conns().remove(&id).is_some() {
            self.churn.count(churn::Event::ConnectionClosed);
        }
    }

    /// Connections, channels and queues opened and closed since the start.
    pub fn churn(&self) -> &Churn {
        &self.churn
    }

    /// The open connections, oldest first.
    /// Records where one of the node's servers listens (its bound address, so port 0 is
    /// resolved), for the management API's listeners and port health check.
    pub fn add_listener(&self, protocol: &'static str, addr: SocketAddr) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((protocol, addr));
    }

    pub fn set_tls_listener(&self, addr: SocketAddr, files: CertFiles) {
        *self
            .tls_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((addr, files));
    }

    /// The amqps listener's address and certificate files, when it serves.
    pub fn tls_listener(&self) -> Option<(SocketAddr, CertFiles)> {
        self.tls_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Closes the connection named `name` (see [`ConnInfo::name`]) with `reason`; false if
    /// there is none.
    pub fn close_connection(&self, name: &str, reason: &str) -> bool {
        let conns = self.conns();
        let Some(info) = conns.values().find(|c| c.name() == name) else {
            return false;
        };
        info.force_close.close(reason);
        true
    }

    pub fn connections(&self) -> Vec<ConnInfo> {
        self.conns().values().cloned().collect()
    }

    /// Expires messages and unused queues in every vhost, and has channels closed that
    /// hold a delivery unacknowledged past the consumer timeout.
    pub fn tick(&self) {
        for broker in self.vhosts() {
            broker.tick(self.config.consumer_timeout);
        }
    }

    /// Samples every counter for the rates; run every few seconds. Returns a counter of
    /// all message traffic so far, which stands still while the node is idle.
    pub fn sample(&self) -> u64 {
        let now = Instant::now();
        let mut samples = Vec::new();
        let mut total = MessageStats::default();
        for broker in self.vhosts() {
            let info = broker.info();
            total.add(&info.stats);
            for q in broker.queues() {
                samples.push((queue_key(broker.name(), &q.name), q.stats));
            }
            samples.push((vhost_key(broker.name()), info.stats));
        }
        samples.push((OVERVIEW.to_string(), total));
        let traffic = total.traffic();
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, stats) in samples {
            rates.record(key, stats, now);
        }
        rates.end_round();
        self.churn.sample(now);
        traffic
    }

    /// The node's totals over all vhosts.
    pub fn overview(&self) -> (VHostInfo, Rates) {
        let mut total = VHostInfo::default();
        for broker in self.vhosts() {
            let info = broker.info();
            total.connections += info.connections;
            total.channels += info.channels;
            total.exchanges += info.exchanges;
            total.queues += info.queues;
            total.consumers += info.consumers;
            total.messages_ready += info.messages_ready;
            total.messages_unacknowledged += info.messages_unacknowledged;
            total.stats.add(&info.stats);
        }
        (total, self.rates_of(OVERVIEW))
    }

    pub fn vhost_rates(&self, vhost: &str) -> Rates {
        self.rates_of(&vhost_key(vhost))
    }

    pub fn queue_rates(&self, vhost: &str, queue: &str) -> Rates {
        self.rates_of(&queue_key(vhost, queue))
    }

    fn rates_of(&self, key: &str) -> Rates {
        self.rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rates(key)
    }
}

fn vhost_key(vhost: &str) -> String {
    format!("vhost\0{vhost}")
}

fn queue_key(vhost: &str, queue: &str) -> String {
    format!("queue\0{vhost}\0{queue}")
}

/// `limits` with `name` set to `value`, or removed.
fn changed(mut limits: Limits, name: &str, value: Option<i64>) -> Limits {
    match value {
        Some(value) => limits.set(name, value),
        None => {
            limits.remove(name);
        }
    }
    limits
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
