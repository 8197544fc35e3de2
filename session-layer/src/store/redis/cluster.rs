//! [`RedisStore`](super::RedisStore) on a Redis Cluster, chosen by a
//! `redis+cluster://host1:port1,host2:port2` URL.
//!
//! Commands that need no WATCH go through the redis crate's cluster client: it routes
//! each key to the master that owns its slot, follows MOVED and ASK, and splits an MGET
//! over keys in several slots into one MGET per slot.
//!
//! A compare-and-set cannot go that way. WATCH belongs to one connection, and the cluster
//! client multiplexes every caller over connections of its own (it even splits a WATCH of
//! several keys by slot); it offers no way to hold one connection for a WATCH … EXEC
//! span. So each span takes a dedicated connection to the master that owns the key's
//! slot, from one pool per node, exactly as one server's pool is used, and runs the same
//! WATCH + GET, MULTI … EXEC. The owner comes from a copy of the cluster's slot map
//! (CLUSTER SLOTS), fetched on first use and again whenever a node answers MOVED or
//! cannot be reached. A span refused before anything was written starts over, at most
//! twice: after MOVED on the node the reply names (the slot changed owner), after ASK on
//! the node importing the slot, with ASKING before each command (the slot is migrating and
//! the key has already left). Every transaction touches its watched key only, so it fits
//! one slot.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use deadpool::managed::{Object, Pool, PoolError, TimeoutType};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError, ServerErrorKind, Value,
};

use super::{
    CONNECT_TIMEOUT, RESPONSE_TIMEOUT, WatchConnections, discard_all, finish, watch_and_get,
    watch_pool,
};

const SCHEME: &str = "redis+cluster://";
const TLS_SCHEME: &str = "rediss+cluster://";
/// Hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;
/// A span's first try, one after MOVED, one after ASK.
const SPAN_ATTEMPTS: usize = 3;

/// The seed nodes of a `redis+cluster://` URL, each with the URL's credentials; None for
/// any other URL. Errors say what to write instead and never repeat the credentials.
pub(super) fn seeds(url: &str) -> Option<Result<Vec<ConnectionInfo>, String>> {
    let starts = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    if starts(TLS_SCHEME) {
        return Some(Err(format!(
            "TLS to a cluster is not built in; write {SCHEME}host1:port1,host2:port2 and keep \
             the cluster on a private network"
        )));
    }
    if !starts(SCHEME) {
        return None;
    }
    let rest = &url[SCHEME.len()..];
    let (credentials, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    if hosts.contains(['/', '?', '#']) {
        return Some(Err(format!(
            "a cluster URL names seed nodes only, with no database or options: \
             {SCHEME}[:password@]host1:port1,host2:port2"
        )));
    }
    Some(
        hosts
            .split(',')
            .map(|seed| {
                if seed.is_empty() {
                    return Err(format!(
                        "empty seed node in {hosts:?}; write {SCHEME}host1:port1,host2:port2"
                    ));
                }
                format!("redis://{credentials}{seed}")
                    .into_connection_info()
                    .map_err(|e| format!("seed node {seed:?}: {e}; write it as host:port"))
            })
            .collect(),
    )
}

/// A master, as the slot map and redirections name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Node {
    host: String,
    port: u16,
}

impl Node {
    /// `host:port` (or `[v6]:port`) as MOVED and ASK replies give it.
    fn parse(addr: &str) -> Option<Node> {
        let (host, port) = addr.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = port.parse().ok()?;
        (!host.is_empty()).then(|| Node {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which master serves which slots, as one fetch of CLUSTER SLOTS saw it.
#[derive(Debug)]
struct SlotMap {
    /// Counts fetches, so that spans which all saw one stale map refresh it once.
    generation: u64,
    /// (first slot, last slot, master), sorted by first slot.
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges
            .get(i)
            .filter(|(first, _, _)| *first <= slot)
            .map(|(_, _, node)| node)
    }

    fn serves(&self, node: &Node) -> bool {
        self.ranges.iter().any(|(_, _, n)| n == node)
    }
}

/// Where a span runs next.
struct Target {
    node: Node,
    /// The node is importing the key's slot (an ASK sent us there).
    asking: bool,
}

/// What a refused step says about where to go.
enum Redirect {
    /// The slot has a new owner; the reply may name it.
    Moved(Option<Node>),
    /// The slot is migrating and the key has left for this node.
    Ask(Node),
}

pub(super) struct Cluster {
    client: ClusterClient,
    /// The cluster client's connection, made on first use (it needs the async runtime).
    plain: OnceLock<ClusterConnection>,
    /// A seed's connection settings: every node is reached with the same credentials.
    template: ConnectionInfo,
    map: Mutex<Option<Arc<SlotMap>>>,
    /// One CLUSTER SLOTS at a time; the others wait for its answer.
    refreshing: tokio::sync::Mutex<()>,
    /// WATCH connections, one pool per master.
    pools: Mutex<HashMap<Node, Pool<WatchConnections>>>,
}

impl Cluster {
    /// Checks the seeds without connecting to any.
    pub(super) fn new(seeds: Vec<ConnectionInfo>) -> Result<Cluster, RedisError> {
        let template = seeds.first().cloned().ok_or_else(|| {
            RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed node"))
        })?;
        let client = ClusterClient::builder(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()?;
        Ok(Cluster {
            client,
            plain: OnceLock::new(),
            template,
            map: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster client's connection. It connects in the background and recovers by
    /// itself, so a node starts while the cluster is down, as with one server.
    pub(super) fn plain(&self) -> ClusterConnection {
        self.plain
            .get_or_init(|| {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                self.client.get_pending_async_connection_with_config(config)
            })
            .clone()
    }

    /// The WATCH … EXEC span of [`RedisStore::compare_and_set`](super::RedisStore), on
    /// the master that owns `key`'s slot (see the module docs).
    pub(super) async fn compare_and_set<T>(
        &self,
        key: &str,
        next: &impl Fn(Option<Vec<u8>>) -> Option<(redis::Pipeline, T)>,
    ) -> Result<Option<T>, String> {
        let slot = slot(key.as_bytes());
        let mut target: Option<Target> = None;
        let mut last = String::new();
        for _ in 0..SPAN_ATTEMPTS {
            let map = self.map().await?;
            let Target { node, asking } = match target.take() {
                Some(target) => target,
                None => Target {
                    node: map
                        .owner(slot)
                        .ok_or_else(|| format!("no master serves slot {slot}"))?
                        .clone(),
                    asking: false,
                },
            };
            let mut conn = match self.pool(&node)?.get().await {
                Ok(conn) => conn,
                Err(err @ (PoolError::Backend(_) | PoolError::Timeout(TimeoutType::Create))) => {
                    // The master is gone or unreachable: a failover may have replaced it.
                    last = format!("{node}: {err}");
                    self.fetch(Some(map.generation)).await?;
                    continue;
                }
                Err(err) => return Err(format!("{node}: {err}")),
            };
            conn.clean = false;
            let current = match watch_and_get(&mut conn.conn, key, asking).await {
                Ok(current) => current,
                Err(err) => {
                    // Nothing was written; whether WATCH took hold is in doubt, so this
                    // connection goes.
                    last = format!("{node}: {err}");
                    match redirect(&err) {
                        Some(Redirect::Ask(to)) => {
                            drop(Object::take(conn));
                            target = Some(Target {
                                node: to,
                                asking: true,
                            });
                        }
                        Some(Redirect::Moved(to)) => {
                            drop(Object::take(conn));
                            self.fetch(Some(map.generation)).await?;
                            target = to.map(|node| Target {
                                node,
                                asking: false,
                            });
                        }
                        None if err.is_io_error() || err.is_unrecoverable_error() => {
                            discard_all(conn);
                            self.fetch(Some(map.generation)).await?;
                        }
                        None => {
                            discard_all(conn);
                            return Err(last);
                        }
                    }
                    continue;
                }
            };
            match finish(&mut conn.conn, next(current), asking).await {
                Ok(done) => {
                    conn.clean = true;
                    return Ok(done);
                }
                Err(err) => {
                    last = format!("{node}: {err}");
                    // A redirected command inside MULTI aborts the whole transaction at
                    // EXEC, and a redirected EXEC discards it: nothing was written, and
                    // EXEC's answer ended the WATCH, so the connection stays usable.
                    match redirect(&err) {
                        Some(Redirect::Ask(to)) => {
                            conn.clean = true;
                            target = Some(Target {
                                node: to,
                                asking: true,
                            });
                        }
                        Some(Redirect::Moved(to)) => {
                            conn.clean = true;
                            drop(conn);
                            self.fetch(Some(map.generation)).await?;
                            target = to.map(|node| Target {
                                node,
                                asking: false,
                            });
                        }
                        // Anything else: the write may have happened, so no retry.
                        None => {
                            discard_all(conn);
                            return Err(last);
                        }
                    }
                }
            }
        }
        Err(format!(
            "slot {slot} kept moving over {SPAN_ATTEMPTS} attempts; last: {last}"
        ))
    }

    /// The slot map, fetched if this is the first span.
    async fn map(&self) -> Result<Arc<SlotMap>, String> {
        match self.cached() {
            Some(map) => Ok(map),
            None => self.fetch(None).await,
        }
    }

    fn cached(&self) -> Option<Arc<SlotMap>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches the slot map to replace generation `stale` (None: there is none yet),
    /// unless another span already has.
    async fn fetch(&self, stale: Option<u64>) -> Result<Arc<SlotMap>, String> {
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.cached();
        if let Some(map) = &current
            && Some(map.generation) != stale
        {
            return Ok(map.clone());
        }
        let reply = self
            .plain()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let fresh = Arc::new(SlotMap {
            generation: current.map_or(0, |map| map.generation + 1),
            ranges: parse_slots(reply)?,
        });
        *self.map.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh.clone());
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|node, _| fresh.serves(node));
        Ok(fresh)
    }

    fn pool(&self, node: &Node) -> Result<Pool<WatchConnections>, String> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(node) {
            return Ok(pool.clone());
        }
        let info = self
            .template
            .clone()
            .set_addr(ConnectionAddr::Tcp(node.host.clone(), node.port));
        let client = redis::Client::open(info).map_err(|e| format!("{node}: {e}"))?;
        let pool = watch_pool(client).map_err(|e| format!("{node}: {e}"))?;
        pools.insert(node.clone(), pool.clone());
        Ok(pool)
    }
}

/// Where a MOVED or ASK among `err`'s replies sends the span; None for other errors.
fn redirect(err: &RedisError) -> Option<Redirect> {
    let errors = err.clone().into_server_errors()?;
    errors.iter().find_map(|(_, e)| {
        let to = e
            .details()
            .and_then(|d| d.split_ascii_whitespace().nth(1))
            .and_then(Node::parse);
        match e.kind()? {
            ServerErrorKind::Moved => Some(Redirect::Moved(to)),
            ServerErrorKind::Ask => to.map(Redirect::Ask),
            _ => None,
        }
    })
}

/// The hash slot of `key`, by the cluster specification: CRC16 (XMODEM) of the key — or
/// of its hash tag, the part between the first `{` and the next `}` when not empty —
/// modulo 16384. The redis crate computes the same (`cluster_routing::Slot::for_key`)
/// but does not expose the number, which the slot map is looked up by.
fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let after = &key[open + 1..];
            let close = after.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &after[..close])
        })
        .unwrap_or(key);
    crc16(tag) % SLOTS
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), bit by bit: a save hashes one short
/// key, so a table would buy nothing measurable.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The masters of a CLUSTER SLOTS reply: `[[first, last, [host, port, id, …], replicas…], …]`.
fn parse_slots(reply: Value) -> Result<Vec<(u16, u16, Node)>, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("CLUSTER SLOTS answered {reply:?}"));
    };
    let mut ranges = entries
        .iter()
        .map(|entry| {
            let unexpected = || format!("CLUSTER SLOTS: unexpected entry {entry:?}");
            let Value::Array(fields) = entry else {
                return Err(unexpected());
            };
            let [
                Value::Int(first),
                Value::Int(last),
                Value::Array(master),
                ..,
            ] = fields.as_slice()
            else {
                return Err(unexpected());
            };
            let [host, Value::Int(port), ..] = master.as_slice() else {
                return Err(unexpected());
            };
            let host = match host {
                Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
                Value::SimpleString(text) => Some(text.clone()),
                _ => None,
            }
            .filter(|h| !h.is_empty() && h != "?")
            .ok_or_else(|| {
                format!(
                    "the master of slots {first}-{last} announces no address it can be reached at"
                )
            })?;
            let slot = |n: &i64| u16::try_from(*n).ok().filter(|&s| s < SLOTS);
            match (slot(first), slot(last), u16::try_from(*port)) {
                (Some(first), Some(last), Ok(port)) if first <= last => {
                    Ok((first, last, Node { host, port }))
                }
                _ => Err(unexpected()),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    ranges.sort_by_key(|(first, _, _)| *first);
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The specification's check value for CRC16-XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // CLUSTER KEYSLOT answers, from a Redis 7 server.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        // Hash tags: only the first non-empty {…} counts.
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
        assert_eq!(slot(b"foo{bar}{zap}"), crc16(b"bar") % SLOTS);
    }

    #[test]
    fn cluster_urls_name_seed_nodes() {
        let parsed = seeds("redis+cluster://:pw@127.0.0.1:7000,localhost:7001/")
            .expect("a cluster URL")
            .expect("valid");
        let addrs: Vec<String> = parsed.iter().map(|s| s.addr().to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:7000", "localhost:7001"]);
        assert!(
            parsed
                .iter()
                .all(|s| s.redis_settings().password() == Some("pw"))
        );
        assert!(seeds("redis://127.0.0.1:6379").is_none());
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/0",
            "redis+cluster://a:1?protocol=3",
            "redis+cluster://a:x",
            "rediss+cluster://a:1",
        ] {
            let err = seeds(bad).expect("a cluster URL").expect_err(bad);
            assert!(
                err.contains("redis+cluster://") || err.contains("host:port"),
                "{err}"
            );
        }
    }

    #[test]
    fn redirections_name_the_node_to_go_to() {
        assert_eq!(
            Node::parse("127.0.0.1:7001"),
            Some(Node {
                host: "127.0.0.1".into(),
                port: 7001
            })
        );
        assert_eq!(
            Node::parse("[::1]:7001").map(|n| n.to_string()),
            Some("[::1]:7001".to_string())
        );
        assert_eq!(Node::parse(":7001"), None);
        assert_eq!(Node::parse("127.0.0.1"), None);
    }

    #[test]
    fn the_slot_map_finds_each_slot_owner() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let entry = |first: i64, last: i64, port: i64| {
            Value::Array(vec![Value::Int(first), Value::Int(last), node(port)])
        };
        let map = SlotMap {
            generation: 0,
            ranges: parse_slots(Value::Array(vec![
                entry(10923, 16383, 3),
                entry(0, 5460, 1),
                entry(5461, 10922, 2),
            ]))
            .expect("valid"),
        };
        let port = |slot| map.owner(slot).map(|n| n.port);
        assert_eq!(
            [port(0), port(5460), port(5461), port(10923), port(16383)],
            [Some(1), Some(1), Some(2), Some(3), Some(3)]
        );
        let gap = SlotMap {
            generation: 0,
            ranges: parse_slots(Value::Array(vec![entry(0, 99, 1)])).expect("valid"),
        };
        assert!(gap.owner(100).is_none());
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![entry(0, 16384, 1)]),
            Value::Array(vec![entry(5, 1, 1)]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                Value::Array(vec![Value::BulkString(Vec::new()), Value::Int(1)]),
            ])]),
        ] {
            assert!(parse_slots(bad).is_err());
        }
    }
}
