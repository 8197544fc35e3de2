//! RabbitMQ definitions: the JSON `rabbitmqctl export_definitions` writes and
//! `load_definitions` reads. The `users`, `vhosts` and `permissions` sections configure
//! who may connect where; `policies` are set, then `exchanges`, `queues` and `bindings`
//! declared at start-up.
//! Everything is checked while loading (hashes, regexes, exchange types, queue arguments,
//! that every vhost and user named exists), so a bad file stops the broker before it
//! serves anyone, with the file and the problem in the message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::exchange::ExchangeKind;
use super::globals::{CLUSTER_ID, Globals};
use super::limits::{self, Limits};
use super::permissions::{Permissions, TopicPermission};
use super::policy::{Kind, Policy};
use super::queue_args::QueueArgs;
use super::users::{GUEST, Hashing, PasswordHash, User, Users};
use super::vhost_meta::VHostMeta;

/// The vhost every broker has unless definitions say otherwise.
pub const DEFAULT_VHOST: &str = "/";

/// Why a definitions file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    // The underlying errors are part of the message, not `source`s, so a chained report
    // (anyhow's `{:#}`) does not print them twice.
    #[error("cannot read AMQP definitions file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("AMQP definitions file {path} is not valid definitions JSON: {error}")]
    Json {
        path: String,
        error: serde_json::Error,
    },
    #[error("AMQP definitions file {path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("--amqp-user {0}: expected NAME:PASSWORD")]
    BadUser(String),
    #[error("cannot declare the AMQP definitions: {0}")]
    Apply(String),
}

/// An exchange to declare at start-up.
#[derive(Debug, Clone)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A queue to declare at start-up.
#[derive(Debug, Clone)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A binding to add at start-up.
#[derive(Debug, Clone)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// True for an exchange-to-exchange binding.
    pub to_exchange: bool,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Users, vhosts and the topology to start with.
#[derive(Debug, Clone)]
pub struct Definitions {
    pub users: Users,
    pub vhosts: Vec<String>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
    /// Policies and operator policies by vhost, set before anything is declared.
    pub policies: Vec<(String, Policy)>,
    /// Global parameters (`cluster_name`, ...), set over the node's.
    pub globals: Globals,
    /// The descriptions, tags and default queue types of the file's vhosts that carry
    /// them, by name.
    pub vhost_meta: BTreeMap<String, VHostMeta>,
    /// What the file holds that this broker does not apply (runtime parameters), one
    /// line each, so that the start can say so instead of the broker
    /// quietly behaving otherwise than the file's RabbitMQ did.
    pub ignored: Vec<String>,
    /// False for RabbitMQ's fresh-node default (guest on `/`), which users, vhosts and
    /// permissions kept in a data directory replace rather than extend.
    pub explicit: bool,
}

/// RabbitMQ's fresh node: vhost `/` and `guest`/`guest`, an administrator with every
/// permission on `/`, allowed from loopback only.
impl Default for Definitions {
    fn default() -> Self {
        let mut d = Definitions::empty();
        d.vhosts.push(DEFAULT_VHOST.to_string());
        d.add_admin(GUEST, "guest");
        d.explicit = false;
        d
    }
}

impl Definitions {
    /// No users, no vhosts.
    pub fn empty() -> Self {
        Definitions {
            users: Users::new(),
            vhosts: Vec::new(),
            exchanges: Vec::new(),
            queues: Vec::new(),
            bindings: Vec::new(),
            policies: Vec::new(),
            globals: Globals::default(),
            vhost_meta: BTreeMap::new(),
            ignored: Vec::new(),
            explicit: true,
        }
    }

    /// Adds (or replaces) an administrator with every permission on `/`, creating `/`
    /// if needed: what `--amqp-user` does.
    pub fn add_admin(&mut self, name: &str, password: &str) {
        if !self.vhosts.iter().any(|v| v == DEFAULT_VHOST) {
            self.vhosts.push(DEFAULT_VHOST.to_string());
        }
        self.users.add(User {
            name: name.to_string(),
            password: PasswordHash::new(password),
            tags: vec!["administrator".to_string()],
        });
        self.users.grant(name, DEFAULT_VHOST, Permissions::all());
    }

    /// Adds a `NAME:PASSWORD` administrator.
    pub fn add_admin_spec(&mut self, spec: &str) -> Result<(), DefinitionsError> {
        match spec.split_once(':') {
            Some((name, password)) if !name.is_empty() => {
                self.add_admin(name, password);
                Ok(())
            }
            _ => Err(DefinitionsError::BadUser(spec.to_string())),
        }
    }

    /// Reads and checks a definitions file.
    pub fn load(path: &Path) -> Result<Self, DefinitionsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DefinitionsError::Read {
            path: shown.clone(),
            error,
        })?;
        let parsed = Self::parse(&text);
        if let Ok(d) = &parsed {
            for what in &d.ignored {
                tracing::warn!("{shown}: {what} not applied: this broker does not support them");
            }
        }
        parsed.map_err(|e| match e {
            ParseError::Json(error) => DefinitionsError::Json {
                path: shown.clone(),
                error,
            },
            ParseError::NoSuchVhost { vhost, what } => DefinitionsError::Invalid {
                path: shown.clone(),
                problem: undefined_vhost(&what, &vhost),
            },
            ParseError::Invalid(problem) => DefinitionsError::Invalid {
                path: shown.clone(),
                problem,
            },
        })
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let file: File = serde_json::from_str(text).map_err(ParseError::Json)?;
        let vhosts = match &file.vhosts {
            Some(vhosts) => vhosts.iter().map(|v| v.name.clone()).collect(),
            None => vec![DEFAULT_VHOST.to_string()],
        };
        Self::from_file(file, vhosts, &[])
    }

    /// Reads a definitions file sent to the management API to import: unlike a file
    /// given at start, its objects may be in vhosts the node already has (`existing`),
    /// and without a `vhosts` section it creates none.
    pub fn parse_import(text: &str, existing: &[String]) -> Result<Self, ImportError> {
        let file: File = serde_json::from_str(text).map_err(|_| ImportError::NotJson)?;
        let vhosts = file
            .vhosts
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect();
        Self::from_file(file, vhosts, existing).map_err(ImportError::from)
    }

    /// Reads a definitions file sent to the management API to import into `vhost` alone,
    /// as RabbitMQ's `POST /api/definitions/VHOST` takes one: its policies, vhost limits,
    /// exchanges, queues and bindings all go to `vhost` (whatever vhost they name); its
    /// users, vhosts and permissions are not imported.
    pub fn parse_vhost_import(text: &str, vhost: &str) -> Result<Self, ImportError> {
        let mut file: File = serde_json::from_str(text).map_err(|_| ImportError::NotJson)?;
        file.users.clear();
        file.global_parameters.clear();
        file.vhosts = None;
        file.permissions.clear();
        file.topic_permissions.clear();
        let here = || vhost.to_string();
        file.policies.iter_mut().for_each(|p| p.vhost = here());
        file.exchanges.iter_mut().for_each(|x| x.vhost = here());
        file.queues.iter_mut().for_each(|q| q.vhost = here());
        file.bindings.iter_mut().for_each(|b| b.vhost = here());
        file.parameters
            .iter_mut()
            .for_each(|p| p.vhost = Some(here()));
        Self::from_file(file, Vec::new(), &[here()]).map_err(ImportError::from)
    }

    /// The file's contents, with `vhosts` to create; objects may be in those or in
    /// `existing` ones.
    fn from_file(file: File, vhosts: Vec<String>, existing: &[String]) -> Result<Self, ParseError> {
        let mut d = Definitions::empty();
        for v in file
            .vhosts
            .iter()
            .flatten()
            .filter(|v| VHostMeta::carried_by(&v.rest))
        {
            let meta = VHostMeta::from_fields(&v.rest)
                .map_err(|e| invalid(format!("vhost '{}': {e}", v.name)))?;
            d.vhost_meta.insert(v.name.clone(), meta);
        }
        d.vhosts = vhosts;
        d.vhosts.dedup();
        let known: Vec<String> = d.vhosts.iter().chain(existing).cloned().collect();
        let known_vhost = |vhost: &str, what: &dyn Fn() -> String| {
            if known.iter().any(|v| v == vhost) {
                Ok(())
            } else {
                Err(ParseError::NoSuchVhost {
                    vhost: vhost.to_string(),
                    what: what(),
                })
            }
        };
        for mut u in file.users {
            let limits = Limits::from_json(&std::mem::take(&mut u.limits), &limits::USER)
                .map_err(|e| invalid(format!("limits of user '{}': {e}", u.name)))?;
            let name = u.name.clone();
            d.users.add(u.into_user()?);
            d.users.set_user_limits(&name, limits);
        }
        for p in file.permissions {
            known_vhost(&p.vhost, &|| format!("permissions of user '{}'", p.user))?;
            if d.users.get(&p.user).is_none() {
                return Err(invalid(format!(
                    "permissions for unknown user '{}' in vhost '{}'",
                    p.user, p.vhost
                )));
            }
            let perms = Permissions::new(&p.configure, &p.write, &p.read).map_err(|e| {
                invalid(format!(
                    "permissions of user '{}' in vhost '{}': bad regular expression: {e}",
                    p.user, p.vhost
                ))
            })?;
            d.users.grant(&p.user, &p.vhost, perms);
        }
        for x in file.exchanges {
            known_vhost(&x.vhost, &|| format!("exchange '{}'", x.name))?;
            let kind = ExchangeKind::parse(&x.kind).ok_or_else(|| {
                invalid(format!(
                    "exchange '{}' in vhost '{}' has unknown type '{}'",
                    x.name, x.vhost, x.kind
                ))
            })?;
            d.exchanges.push(ExchangeDef {
                kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: table(&x.arguments),
                vhost: x.vhost,
                name: x.name,
            });
        }
        for q in file.queues {
            known_vhost(&q.vhost, &|| format!("queue '{}'", q.name))?;
            let arguments = table(&q.arguments);
            QueueArgs::parse(&arguments, &q.name, &q.vhost).map_err(|e| invalid(e.text))?;
            d.queues.push(QueueDef {
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments,
                vhost: q.vhost,
                name: q.name,
            });
        }
        for b in file.bindings {
            known_vhost(&b.vhost, &|| format!("binding from '{}'", b.source))?;
            let to_exchange = match b.destination_type.as_str() {
                "queue" => false,
                "exchange" => true,
                other => {
                    return Err(invalid(format!(
                        "binding from '{}' has unknown destination_type '{other}'",
                        b.source
                    )));
                }
            };
            d.bindings.push(BindingDef {
                arguments: table(&b.arguments),
                vhost: b.vhost,
                source: b.source,
                destination: b.destination,
                to_exchange,
                routing_key: b.routing_key,
            });
        }
        for p in file.policies {
            known_vhost(&p.vhost, &|| format!("policy '{}'", p.name))?;
            let policy = Policy::parse(&p.name, &Value::Object(p.body)).map_err(|reason| {
                invalid(format!(
                    "policy '{}' in vhost '{}': {}",
                    p.name,
                    p.vhost,
                    reason.trim_end()
                ))
            })?;
            d.policies.push((p.vhost, policy));
        }
        for t in file.topic_permissions {
            known_vhost(&t.vhost, &|| {
                format!("topic permissions of user '{}'", t.user)
            })?;
            if d.users.get(&t.user).is_none() {
                return Err(invalid(format!(
                    "topic permissions for unknown user '{}' in vhost '{}'",
                    t.user, t.vhost
                )));
            }
            let permission = TopicPermission::new(
                &t.exchange,
                &t.write,
                &t.read,
                &t.user,
                &t.vhost,
            )
            .map_err(|e| {
                invalid(format!(
                    "topic permissions of user '{}' in vhost '{}': bad regular expression: {e}",
                    t.user, t.vhost
                ))
            })?;
            d.users.grant_topic(&t.user, &t.vhost, permission);
        }
        // The cluster id is the node's own, never another's from a file.
        d.globals = file
            .global_parameters
            .into_iter()
            .filter(|g| g.name != CLUSTER_ID)
            .map(|g| (g.name, g.value))
            .collect();
        let mut unsupported = Vec::new();
        for p in file.parameters {
            if p.component == OPERATOR_POLICY {
                let vhost = p.vhost.unwrap_or_default();
                known_vhost(&vhost, &|| format!("operator policy '{}'", p.name))?;
                let policy =
                    Policy::parse_as(Kind::Operator, &p.name, &p.value).map_err(|reason| {
                        invalid(format!(
                            "operator policy '{}' in vhost '{vhost}': {}",
                            p.name,
                            reason.trim_end()
                        ))
                    })?;
                d.policies.push((vhost, policy));
                continue;
            }
            if p.component != VHOST_LIMITS {
                unsupported.push(format!("'{}'", p.name));
                continue;
            }
            let vhost = p.vhost.unwrap_or_default();
            known_vhost(&vhost, &|| "vhost limits".to_string())?;
            let limits = p
                .value
                .as_object()
                .ok_or_else(|| "not an object".to_string())
                .and_then(|map| Limits::from_json(map, &limits::VHOST))
                .map_err(|e| invalid(format!("limits of vhost '{vhost}': {e}")))?;
            d.users.set_vhost_limits(&vhost, limits);
        }
        if !unsupported.is_empty() {
            d.ignored
                .push(format!("parameters {}", unsupported.join(", ")));
        }
        Ok(d)
    }
}

#[derive(Debug)]
enum ParseError {
    Json(serde_json::Error),
    /// An object in a vhost that neither the file nor the node has.
    NoSuchVhost {
        vhost: String,
        what: String,
    },
    Invalid(String),
}

/// Why a definitions file sent to the management API was refused.
#[derive(Debug)]
pub enum ImportError {
    NotJson,
    NoSuchVhost(String),
    Invalid(String),
}

impl From<ParseError> for ImportError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Json(_) => ImportError::NotJson,
            ParseError::NoSuchVhost { vhost, .. } => ImportError::NoSuchVhost(vhost),
            ParseError::Invalid(problem) => ImportError::Invalid(problem),
        }
    }
}

fn undefined_vhost(what: &str, vhost: &str) -> String {
    format!("{what} names vhost '{vhost}', which the file does not define")
}

fn invalid(problem: String) -> ParseError {
    ParseError::Invalid(problem)
}

/// The sections read. Of `parameters` only vhost limits and operator policies are
/// applied; the others are read to name what is not. Other sections are ignored.
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    policies: Vec<PolicyJson>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermissionJson>,
    #[serde(default)]
    parameters: Vec<ParameterJson>,
    #[serde(default)]
    global_parameters: Vec<GlobalJson>,
    #[serde(default)]
    users: Vec<UserJson>,
    vhosts: Option<Vec<VHostJson>>,
    #[serde(default)]
    permissions: Vec<PermissionJson>,
    #[serde(default)]
    exchanges: Vec<ExchangeJson>,
    #[serde(default)]
    queues: Vec<QueueJson>,
    #[serde(default)]
    bindings: Vec<BindingJson>,
}

/// RabbitMQ keeps vhost limits as the runtime parameter `limits` of this component.
pub const VHOST_LIMITS: &str = "vhost-limits";
/// RabbitMQ keeps operator policies as runtime parameters of this component.
pub const OPERATOR_POLICY: &str = "operator_policy";

#[derive(Deserialize)]
struct GlobalJson {
    name: String,
    value: Value,
}

#[derive(Deserialize)]
struct ParameterJson {
    #[serde(default)]
    vhost: Option<String>,
    #[serde(default)]
    component: String,
    name: String,
    #[serde(default)]
    value: Value,
}

/// A policy entry: its place and name, and the rest as the management API takes it.
#[derive(Deserialize)]
struct PolicyJson {
    /// Absent in a file imported into one vhost.
    #[serde(default)]
    vhost: String,
    name: String,
    #[serde(flatten)]
    body: Map<String, Value>,
}

#[derive(Deserialize)]
struct TopicPermissionJson {
    user: String,
    vhost: String,
    exchange: String,
    #[serde(default)]
    write: String,
    #[serde(default)]
    read: String,
}

#[derive(Deserialize)]
struct VHostJson {
    name: String,
    /// Description, tags, metadata and the default queue type.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct UserJson {
    name: String,
    #[serde(default)]
    password_hash: Option<String>,
    /// Hand-written files may give the password itself, as RabbitMQ allows.
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    limits: Map<String, Value>,
}

/// `"administrator,management"` before RabbitMQ 3.10, a list since.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Tags {
    #[default]
    None,
    Text(String),
    List(Vec<String>),
}

impl UserJson {
    fn into_user(self) -> Result<User, ParseError> {
        let algorithm = self
            .hashing_algorithm
            .as_deref()
            .unwrap_or(Hashing::Sha256.as_str());
        let hashing = Hashing::parse(algorithm).ok_or_else(|| {
            invalid(format!(
                "user '{}' uses hashing_algorithm '{algorithm}'; supported: rabbit_password_hashing_sha256, rabbit_password_hashing_sha512",
                self.name
            ))
        })?;
        let password = match (self.password_hash, self.password) {
            (Some(hash), _) => PasswordHash::decode(hashing, &hash)
                .map_err(|e| invalid(format!("user '{}': {e}", self.name)))?,
            (None, Some(plain)) => PasswordHash::new(&plain),
            (None, None) => PasswordHash::decode(hashing, "")
                .map_err(|e| invalid(format!("user '{}': {e}", self.name)))?,
        };
        let tags = match self.tags {
            Tags::None => Vec::new(),
            Tags::Text(t) => t
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            Tags::List(list) => list,
        };
        Ok(User {
            name: self.name,
            password,
            tags,
        })
    }
}

#[derive(Deserialize)]
struct PermissionJson {
    user: String,
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

#[derive(Deserialize)]
struct ExchangeJson {
    name: String,
    /// Absent in a file imported into one vhost.
    #[serde(default)]
    vhost: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct QueueJson {
    name: String,
    /// Absent in a file imported into one vhost.
    #[serde(default)]
    vhost: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct BindingJson {
    source: String,
    /// Absent in a file imported into one vhost.
    #[serde(default)]
    vhost: String,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: serde_json::Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// JSON arguments as RabbitMQ turns them into an AMQP table: integers are `long`s,
/// strings `longstr`s.
/// JSON arguments (`{"x-message-ttl": 1000}`) as an AMQP table, as RabbitMQ reads them.
pub(crate) fn table(map: &serde_json::Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in map {
        t.insert(k.as_str().into(), value(v));
    }
    t
}

fn value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(value).collect::<Vec<_>>()))
        }
        Value::Object(o) => AMQPValue::FieldTable(table(o)),
    }
}

/// A user as a definitions file (and the management API) lists one.
pub fn user_json(u: &User, limits: &Limits) -> Value {
    serde_json::json!({
        "name": u.name,
        "password_hash": u.password.encode(),
        "hashing_algorithm": u.password.hashing().as_str(),
        "tags": u.tags,
        "limits": limits.to_json(),
    })
}

/// Vhost limits in `vhosts` as a definitions file lists them: runtime parameters.
pub fn vhost_limits_json(users: &Users, vhosts: &[String]) -> Value {
    users
        .all_vhost_limits()
        .into_iter()
        .filter(|(vhost, _)| vhosts.iter().any(|v| v == vhost))
        .map(|(vhost, limits)| {
            serde_json::json!({
                "value": limits.to_json(),
                "vhost": vhost,
                "component": VHOST_LIMITS,
                "name": "limits",
            })
        })
        .collect()
}

/// Every permission granted in `vhosts`, by user then vhost, as a definitions file lists
/// them.
pub fn permissions_json(users: &Users, vhosts: &[String]) -> Value {
    let mut grants: Vec<(&str, &str, &Arc<Permissions>)> = users
        .grants()
        .filter(|(_, vhost, _)| vhosts.iter().any(|v| v == vhost))
        .collect();
    grants.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    grants
        .into_iter()
        .map(|(user, vhost, p)| {
            serde_json::json!({
                "user": user,
                "vhost": vhost,
                "configure": p.configure,
                "write": p.write,
                "read": p.read,
            })
        })
        .collect()
}

/// A vhost as a definitions file lists it: its name and metadata.
pub fn vhost_json(name: &str, meta: &VHostMeta) -> Value {
    let mut fields = meta.json_fields();
    fields.insert("name".into(), Value::from(name));
    Value::Object(fields)
}

/// The users, vhosts (with their metadata), permissions, limits and global parameters
/// part of a definitions file.
pub fn access_json(
    users: &Users,
    vhosts: &[String],
    meta: &BTreeMap<String, VHostMeta>,
    globals: &Globals,
) -> Value {
    let mut list: Vec<&Arc<User>> = users.all().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let none = VHostMeta::default();
    serde_json::json!({
        "users": list.into_iter().map(|u| user_json(u, &users.user_limits(&u.name))).collect::<Vec<_>>(),
        "vhosts": vhosts.iter().map(|v| vhost_json(v, meta.get(v).unwrap_or(&none))).collect::<Vec<_>>(),
        "permissions": permissions_json(users, vhosts),
        "topic_permissions": topic_permissions_json(users, vhosts),
        "parameters": vhost_limits_json(users, vhosts),
        "global_parameters": globals.to_json(),
    })
}

/// Every topic permission granted in `vhosts`, by user, vhost and exchange, as a
/// definitions file (and the management API) lists them.
pub fn topic_permissions_json(users: &Users, vhosts: &[String]) -> Value {
    let mut grants: Vec<(&str, &str, &TopicPermission)> = users
        .topic_grants()
        .filter(|(_, vhost, _)| vhosts.iter().any(|v| v == vhost))
        .collect();
    grants.sort_by(|a, b| (a.0, a.1, &a.2.exchange).cmp(&(b.0, b.1, &b.2.exchange)));
    grants
        .into_iter()
        .map(|(user, vhost, p)| {
            serde_json::json!({
                "user": user,
                "vhost": vhost,
                "exchange": p.exchange,
                "write": p.write,
                "read": p.read,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::permissions::Perm;

    const EXPORT: &str = r#"{
        "rabbit_version": "3.12.1",
        "users": [
            {"name": "app", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"], "limits": {}},
            {"name": "old", "password_hash": "", "tags": "administrator,monitoring"}
        ],
        "vhosts": [{"name": "/"}, {"name": "events", "metadata": {}}],
        "permissions": [{"user": "app", "vhost": "events", "configure": "^app\\.", "write": ".*", "read": ".*"}],
        "policies": [],
        "exchanges": [{"name": "x", "vhost": "events", "type": "fanout", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "q", "vhost": "events", "durable": true, "auto_delete": false,
                    "arguments": {"x-message-ttl": 1000, "x-queue-type": "classic"}}],
        "bindings": [{"source": "x", "vhost": "events", "destination": "q",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}]
    }"#;

    fn problem(text: &str) -> String {
        match Definitions::parse(text) {
            Err(ParseError::Invalid(p)) => p,
            Err(ParseError::NoSuchVhost { vhost, what }) => undefined_vhost(&what, &vhost),
            Err(ParseError::Json(e)) => format!("json: {e}"),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn reads_a_rabbitmq_export() {
        let d = Definitions::parse(EXPORT).expect("valid");
        assert_eq!(d.vhosts, vec!["/", "events"]);
        let app = d.users.get("app").expect("app");
        assert!(app.password.verify(b"test12"));
        assert_eq!(app.tags, vec!["management"]);
        let old = d.users.get("old").expect("old");
        assert_eq!(old.tags, vec!["administrator", "monitoring"]);
        assert!(!old.password.verify(b""));
        assert!(d.users.permissions("app", "events").is_some());
        assert!(d.users.permissions("app", "/").is_none());
        assert_eq!(d.exchanges[0].kind, ExchangeKind::Fanout);
        assert_eq!(
            d.queues[0].arguments.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(1000))
        );
        assert!(!d.bindings[0].to_exchange);
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
    }

    #[test]
    fn applies_limits_and_global_parameters_and_names_other_parameters() {
        let d = Definitions::parse(
            r#"{"users": [{"name": "app", "password": "pw", "tags": "",
                           "limits": {"max-connections": 5, "max-channels": -1}}],
                "vhosts": [{"name": "/"}],
                "global_parameters": [{"name": "cluster_name", "value": "edge"},
                                      {"name": "internal_cluster_id", "value": "other"}],
                "parameters": [
                  {"vhost": "/", "component": "vhost-limits", "name": "limits",
                   "value": {"max-queues": 10}},
                  {"vhost": "/", "component": "operator_policy", "name": "cap",
                   "value": {"pattern": ".*", "definition": {"max-length": 100},
                             "priority": 0, "apply-to": "queues"}},
                  {"vhost": "/", "component": "shovel", "name": "to-dc2", "value": {}}]}"#,
        )
        .expect("valid");
        let (vhost, cap) = &d.policies[0];
        assert_eq!((vhost.as_str(), cap.name.as_str()), ("/", "cap"));
        assert_eq!(
            (cap.kind, cap.effect.max_length),
            (Kind::Operator, Some(100))
        );
        let app = d.users.user_limits("app");
        assert_eq!(app.get("max-connections"), Some(5));
        assert_eq!(app.get("max-channels"), None, "negative is no limit");
        assert_eq!(d.users.vhost_limits("/").get("max-queues"), Some(10));
        assert_eq!(d.ignored, vec!["parameters 'to-dc2'"]);
        assert_eq!(d.globals.cluster_name(), Some("edge"));
        let exported = access_json(&d.users, &d.vhosts, &d.vhost_meta, &d.globals);
        assert_eq!(exported["parameters"][0]["value"]["max-queues"], 10);
        assert_eq!(
            exported["global_parameters"],
            serde_json::json!([{"name": "cluster_name", "value": "edge"}])
        );
        assert_eq!(exported["users"][0]["limits"]["max-connections"], 5);

        let not_a_limit = r#"{"vhosts": [{"name": "/"}], "parameters": [{"vhost": "/",
            "component": "operator_policy", "name": "dlx",
            "value": {"pattern": ".*", "definition": {"dead-letter-exchange": "x"}}}]}"#;
        assert!(
            problem(not_a_limit).contains("operator policy 'dlx' in vhost '/'"),
            "{}",
            problem(not_a_limit)
        );
        let bad = r#"{"users": [{"name": "app", "password": "pw", "limits": {"max-queues": 1}}]}"#;
        assert_eq!(
            problem(bad),
            "limits of user 'app': Unrecognised terms [{<<\"max-queues\">>,1}]"
        );
    }

    #[test]
    fn an_import_may_use_the_node_s_vhosts_and_creates_only_its_own() {
        let queue = r#"{"queues": [{"name": "q", "vhost": "shop", "durable": true,
                                   "auto_delete": false, "arguments": {}}]}"#;
        let d = Definitions::parse_import(queue, &["shop".to_string()]).expect("valid");
        assert!(d.vhosts.is_empty(), "{:?}", d.vhosts);
        assert_eq!(d.queues[0].vhost, "shop");
        match Definitions::parse_import(queue, &["/".to_string()]) {
            Err(ImportError::NoSuchVhost(vhost)) => assert_eq!(vhost, "shop"),
            other => panic!("expected no_such_vhost, got {other:?}"),
        }
        assert!(matches!(
            Definitions::parse_import("{", &[]),
            Err(ImportError::NotJson)
        ));
        // Into one vhost: everything lands there, users are not taken.
        let one = r#"{"users": [{"name": "u", "password": "pw"}],
                      "queues": [{"name": "q", "vhost": "elsewhere", "durable": true,
                                  "auto_delete": false, "arguments": {}}],
                      "parameters": [{"component": "vhost-limits", "name": "limits",
                                      "value": {"max-queues": 2}}]}"#;
        let d = Definitions::parse_vhost_import(one, "shop").expect("valid");
        assert_eq!(d.queues[0].vhost, "shop");
        assert!(d.users.get("u").is_none());
        assert_eq!(d.users.vhost_limits("shop").get("max-queues"), Some(2));
    }

    #[test]
    fn applies_policies_and_topic_permissions() {
        let d = Definitions::parse(
            r#"{"users": [{"name": "guest", "password": "guest", "tags": "administrator"}],
                "policies": [{"vhost": "/", "name": "dlx", "pattern": ".*", "apply-to": "queues",
                 "definition": {"dead-letter-exchange": "dead"}, "priority": 0}],
                "topic_permissions": [{"user": "guest", "vhost": "/", "exchange": "amq.topic",
                 "write": "^a", "read": ".*"}],
                "parameters": []}"#,
        )
        .expect("valid");
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        let topics = d.users.topic_permissions("guest", "/");
        assert_eq!(topics[0].exchange, "amq.topic");
        assert!(topics[0].check(Perm::Write, "a.b", "/", "guest").is_ok());
        assert!(topics[0].check(Perm::Write, "b.a", "/", "guest").is_err());
        let (vhost, policy) = &d.policies[0];
        assert_eq!((vhost.as_str(), policy.name.as_str()), ("/", "dlx"));
        assert_eq!(policy.effect.dead_letter_exchange.as_deref(), Some("dead"));
    }

    #[test]
    fn refuses_a_policy_rabbitmq_would_refuse() {
        let reason = problem(
            r#"{"policies": [{"vhost": "/", "name": "p", "pattern": ".*",
                 "definition": {"message-ttl": -5}}]}"#,
        );
        assert!(
            reason.contains("policy 'p' in vhost '/': Validation failed")
                && reason.contains("-5 is not a valid message TTL"),
            "{reason}"
        );
    }

    #[test]
    fn refuses_what_rabbitmq_would_not_load() {
        assert!(problem("{").starts_with("json"));
        assert!(
            problem(r#"{"vhosts": [{"name": "/"}], "users": [{"name": "u"}], "permissions": [{"user": "u", "vhost": "nope", "configure": "", "write": "", "read": ""}]}"#)
                .contains("vhost 'nope'")
        );
        assert!(
            problem(r#"{"users": [{"name": "u"}], "permissions": [{"user": "u", "vhost": "/", "configure": "(", "write": "", "read": ""}]}"#)
                .contains("bad regular expression")
        );
        assert!(
            problem(r#"{"users": [{"name": "u", "password_hash": "x", "hashing_algorithm": "rabbit_password_hashing_md5"}]}"#)
                .contains("md5")
        );
        assert!(
            problem(r#"{"exchanges": [{"name": "x", "vhost": "/", "type": "x-delayed"}]}"#)
                .contains("unknown type")
        );
        assert!(
            problem(
                r#"{"queues": [{"name": "q", "vhost": "/", "arguments": {"x-max-length": "2"}}]}"#
            )
            .contains("x-max-length")
        );
        assert!(problem(r#"{"permissions": [{"user": "ghost", "vhost": "/", "configure": "", "write": "", "read": ""}]}"#).contains("unknown user"));
    }

    #[test]
    fn amqp_user_specs() {
        let mut d = Definitions::empty();
        d.add_admin_spec("ops:s3:cret").expect("valid");
        assert_eq!(d.vhosts, vec!["/"]);
        assert!(d.users.get("ops").expect("ops").password.verify(b"s3:cret"));
        assert!(d.users.permissions("ops", "/").is_some());
        assert!(d.add_admin_spec("nopassword").is_err());
        assert!(d.add_admin_spec(":pw").is_err());
    }
}
