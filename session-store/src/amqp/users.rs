//! Broker users: names, salted password hashes, tags and per-vhost permissions, checked
//! the way RabbitMQ's internal auth backend checks them.
//!
//! Passwords are stored as RabbitMQ stores them (`rabbit_password_hashing_sha256`, or
//! sha512): base64 of a 4-byte salt followed by the digest of salt ++ password. That is
//! the `password_hash` a `rabbitmqctl export_definitions` file carries, so such a file
//! works here unchanged and its users keep their passwords.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256, Sha512};

use super::limits::Limits;
use super::permissions::{Permissions, TopicPermission};

/// The user RabbitMQ lets in only from loopback (its default `loopback_users`).
pub const GUEST: &str = "guest";

/// A digest algorithm of RabbitMQ's password hashing modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    Sha256,
    Sha512,
}

impl Hashing {
    /// The module name definitions files use in `hashing_algorithm`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rabbit_password_hashing_sha256" => Some(Hashing::Sha256),
            "rabbit_password_hashing_sha512" => Some(Hashing::Sha512),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hashing::Sha256 => "rabbit_password_hashing_sha256",
            Hashing::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            Hashing::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
            Hashing::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        }
    }
}

/// A salted password hash; `None` inside means no password can log in, as with
/// RabbitMQ's empty `password_hash`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    hashing: Hashing,
    /// Salt (4 bytes) followed by the digest.
    bytes: Option<Vec<u8>>,
}

impl PasswordHash {
    /// Hashes `password` with a random salt.
    pub fn new(password: &str) -> Self {
        let mut salt = [0u8; 4];
        // Without an entropy source the salt is fixed; the hash still verifies.
        let _ = getrandom::fill(&mut salt);
        Self::with_salt(Hashing::Sha256, salt, password)
    }

    pub fn with_salt(hashing: Hashing, salt: [u8; 4], password: &str) -> Self {
        let mut bytes = salt.to_vec();
        bytes.extend(hashing.digest(&salt, password.as_bytes()));
        PasswordHash {
            hashing,
            bytes: Some(bytes),
        }
    }

    /// Reads a definitions file's base64 `password_hash`; empty means no password.
    pub fn decode(hashing: Hashing, encoded: &str) -> Result<Self, String> {
        if encoded.is_empty() {
            return Ok(PasswordHash {
                hashing,
                bytes: None,
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("password_hash is not base64: {e}"))?;
        let want = 4 + hashing.digest(&[], &[]).len();
        if bytes.len() != want {
            return Err(format!(
                "password_hash has {} bytes, {} wants {want} (4 of salt and the digest)",
                bytes.len(),
                hashing.as_str()
            ));
        }
        Ok(PasswordHash {
            hashing,
            bytes: Some(bytes),
        })
    }

    /// The base64 text a definitions export carries.
    pub fn encode(&self) -> String {
        self.bytes.as_ref().map_or_else(String::new, |b| {
            base64::engine::general_purpose::STANDARD.encode(b)
        })
    }

    pub fn hashing(&self) -> Hashing {
        self.hashing
    }

    /// Whether `password` hashes to this, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let Some(bytes) = &self.bytes else {
            return false;
        };
        let (salt, digest) = bytes.split_at(4);
        let computed = self.hashing.digest(salt, password);
        computed.len() == digest.len()
            && computed
                .iter()
                .zip(digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Never shows the hash.
impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// A user who may log in.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: PasswordHash,
    /// `administrator`, `management`, `monitoring`, ... as in RabbitMQ; the management
    /// API admits `administrator` and `management`.
    pub tags: Vec<String>,
}

impl User {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// RabbitMQ's rule for the management UI and HTTP API.
    pub fn may_manage(&self) -> bool {
        ["administrator", "management", "monitoring", "policymaker"]
            .iter()
            .any(|t| self.has_tag(t))
    }
}

/// Every user, and what each may do in each vhost.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<String, Arc<User>>,
    /// By (user, vhost).
    permissions: HashMap<(String, String), Arc<Permissions>>,
    /// By (user, vhost): one per exchange.
    topic_permissions: HashMap<(String, String), Arc<Vec<TopicPermission>>>,
    /// Users refused unless they connect from loopback.
    loopback_only: Vec<String>,
    /// By user; only users with some.
    user_limits: HashMap<String, Limits>,
    /// By vhost; only vhosts with some.
    vhost_limits: HashMap<String, Limits>,
}

impl Users {
    /// Empty, with RabbitMQ's default `loopback_users = guest`.
    pub fn new() -> Self {
        Users {
            loopback_only: vec![GUEST.to_string()],
            ..Users::default()
        }
    }

    /// Adds or replaces a user.
    pub fn add(&mut self, user: User) {
        self.users.insert(user.name.clone(), Arc::new(user));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.users.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    /// Removes a user and its permissions; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        self.permissions.retain(|(user, _), _| user != name);
        self.topic_permissions.retain(|(user, _), _| user != name);
        self.user_limits.remove(name);
        self.users.remove(name).is_some()
    }

    /// Removes `user`'s permissions in `vhost`; false if it had none.
    pub fn revoke(&mut self, user: &str, vhost: &str) -> bool {
        self.permissions
            .remove(&(user.to_string(), vhost.to_string()))
            .is_some()
    }

    /// Removes every permission in `vhost`, and its limits (it is going away).
    pub fn revoke_all(&mut self, vhost: &str) {
        self.permissions.retain(|(_, v), _| v != vhost);
        self.topic_permissions.retain(|(_, v), _| v != vhost);
        self.vhost_limits.remove(vhost);
    }

    /// Sets `user`'s topic permission in `vhost` on its exchange, replacing one on the
    /// same exchange; true if there was one.
    pub fn grant_topic(&mut self, user: &str, vhost: &str, permission: TopicPermission) -> bool {
        let key = (user.to_string(), vhost.to_string());
        let mut list: Vec<TopicPermission> = self
            .topic_permissions
            .get(&key)
            .map(|l| l.as_ref().clone())
            .unwrap_or_default();
        let before = list.len();
        list.retain(|p| p.exchange != permission.exchange);
        let replaced = list.len() != before;
        list.push(permission);
        self.topic_permissions.insert(key, Arc::new(list));
        replaced
    }

    /// Removes `user`'s topic permissions in `vhost` (on `exchange` only, if given);
    /// false if there were none.
    pub fn revoke_topic(&mut self, user: &str, vhost: &str, exchange: Option<&str>) -> bool {
        let key = (user.to_string(), vhost.to_string());
        let Some(list) = self.topic_permissions.get(&key) else {
            return false;
        };
        let kept: Vec<TopicPermission> = list
            .iter()
            .filter(|p| exchange.is_some_and(|x| p.exchange != x))
            .cloned()
            .collect();
        let removed = kept.len() != list.len();
        if kept.is_empty() {
            self.topic_permissions.remove(&key);
        } else {
            self.topic_permissions.insert(key, Arc::new(kept));
        }
        removed
    }

    /// `user`'s topic permissions in `vhost` (empty: unrestricted).
    pub fn topic_permissions(&self, user: &str, vhost: &str) -> Arc<Vec<TopicPermission>> {
        self.topic_permissions
            .get(&(user.to_string(), vhost.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every (user, vhost, topic permission) granted.
    pub fn topic_grants(&self) -> impl Iterator<Item = (&str, &str, &TopicPermission)> {
        self.topic_permissions
            .iter()
            .flat_map(|((user, vhost), list)| {
                list.iter().map(move |p| (user.as_str(), vhost.as_str(), p))
            })
    }

    /// Every (user, vhost, permissions) granted.
    pub fn grants(&self) -> impl Iterator<Item = (&str, &str, &Arc<Permissions>)> {
        self.permissions
            .iter()
            .map(|((user, vhost), p)| (user.as_str(), vhost.as_str(), p))
    }

    /// Adds `other`'s users and permissions, replacing those of the same names.
    pub fn merge(&mut self, other: &Users) {
        for user in other.users.values() {
            self.users.insert(user.name.clone(), user.clone());
        }
        for (key, p) in &other.permissions {
            self.permissions.insert(key.clone(), p.clone());
        }
        for (key, list) in &other.topic_permissions {
            self.topic_permissions.insert(key.clone(), list.clone());
        }
        for (user, limits) in &other.user_limits {
            self.user_limits.insert(user.clone(), limits.clone());
        }
        for (vhost, limits) in &other.vhost_limits {
            self.vhost_limits.insert(vhost.clone(), limits.clone());
        }
    }

    /// `user`'s limits; empty when it has none.
    pub fn user_limits(&self, user: &str) -> Limits {
        self.user_limits.get(user).cloned().unwrap_or_default()
    }

    /// `vhost`'s limits; empty when it has none.
    pub fn vhost_limits(&self, vhost: &str) -> Limits {
        self.vhost_limits.get(vhost).cloned().unwrap_or_default()
    }

    /// One of `user`'s limits, if set and not negative: looked up where connections and
    /// channels open, without copying the user's limits.
    pub fn user_limit(&self, user: &str, name: &str) -> Option<u64> {
        self.user_limits.get(user)?.get(name)
    }

    /// One of `vhost`'s limits, if set and not negative.
    pub fn vhost_limit(&self, vhost: &str, name: &str) -> Option<u64> {
        self.vhost_limits.get(vhost)?.get(name)
    }

    /// Replaces `user`'s limits (none when `limits` is empty).
    pub fn set_user_limits(&mut self, user: &str, limits: Limits) {
        set_limits(&mut self.user_limits, user, limits);
    }

    /// Replaces `vhost`'s limits (none when `limits` is empty).
    pub fn set_vhost_limits(&mut self, vhost: &str, limits: Limits) {
        set_limits(&mut self.vhost_limits, vhost, limits);
    }

    /// Users with limits, by name.
    pub fn all_user_limits(&self) -> Vec<(&str, &Limits)> {
        sorted(&self.user_limits)
    }

    /// Vhosts with limits, by name.
    pub fn all_vhost_limits(&self) -> Vec<(&str, &Limits)> {
        sorted(&self.vhost_limits)
    }

    pub fn grant(&mut self, user: &str, vhost: &str, permissions: Permissions) {
        self.permissions
            .insert((user.to_string(), vhost.to_string()), Arc::new(permissions));
    }

    /// What `user` may do in `vhost`; None means no access to the vhost at all.
    pub fn permissions(&self, user: &str, vhost: &str) -> Option<Arc<Permissions>> {
        self.permissions
            .get(&(user.to_string(), vhost.to_string()))
            .cloned()
    }

    /// The user these credentials name, if the password matches and the user may log in
    /// from `peer` (loopback-only users from loopback addresses only).
    pub fn login(
        &self,
        user: &[u8],
        password: &[u8],
        peer: Option<SocketAddr>,
    ) -> Option<Arc<User>> {
        let name = std::str::from_utf8(user).ok()?;
        let found = self.users.get(name)?;
        let loopback = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
        let allowed_from = loopback || !self.loopback_only.iter().any(|u| u == name);
        (allowed_from && found.password.verify(password)).then(|| found.clone())
    }

    /// SASL EXTERNAL: the user a verified client certificate names, with no password;
    /// loopback-only users (guest) still only from loopback.
    pub fn login_external(&self, name: &str, peer: Option<SocketAddr>) -> Option<Arc<User>> {
        let found = self.users.get(name)?;
        let loopback = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
        (loopback || !self.loopback_only.iter().any(|u| u == name)).then(|| found.clone())
    }
}

fn set_limits(all: &mut HashMap<String, Limits>, name: &str, limits: Limits) {
    if limits.is_empty() {
        all.remove(name);
    } else {
        all.insert(name.to_string(), limits);
    }
}

fn sorted(all: &HashMap<String, Limits>) -> Vec<(&str, &Limits)> {
    let mut list: Vec<(&str, &Limits)> = all.iter().map(|(n, l)| (n.as_str(), l)).collect();
    list.sort_by_key(|(name, _)| *name);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_rabbitmq() {
        // From RabbitMQ's docs: salt 908DC60A, password "test12".
        let hash = PasswordHash::with_salt(Hashing::Sha256, [0x90, 0x8D, 0xC6, 0x0A], "test12");
        assert_eq!(
            hash.encode(),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
        let decoded = PasswordHash::decode(Hashing::Sha256, &hash.encode()).expect("decode");
        assert!(decoded.verify(b"test12"));
        assert!(!decoded.verify(b"test13"));
        assert!(
            !PasswordHash::decode(Hashing::Sha256, "")
                .expect("empty")
                .verify(b"")
        );
        assert!(PasswordHash::decode(Hashing::Sha256, "AAAA").is_err());
        assert!(PasswordHash::decode(Hashing::Sha512, &hash.encode()).is_err());
        let fresh = PasswordHash::new("pw");
        assert!(fresh.verify(b"pw"));
    }

    #[test]
    fn guest_only_from_loopback() {
        let mut users = Users::new();
        for name in [GUEST, "alice"] {
            users.add(User {
                name: name.into(),
                password: PasswordHash::new("pw"),
                tags: Vec::new(),
            });
        }
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().expect("addr");
        let remote = Some(SocketAddr::from(([10, 0, 0, 1], 1)));
        assert!(users.login(b"guest", b"pw", local).is_some());
        assert!(users.login(b"guest", b"pw", Some(mapped)).is_some());
        assert!(users.login(b"guest", b"pw", remote).is_none());
        assert!(users.login(b"alice", b"pw", remote).is_some());
        assert!(users.login(b"alice", b"no", local).is_none());
        assert!(users.login(b"bob", b"pw", local).is_none());
    }
}
