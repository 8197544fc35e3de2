//! Command-line flags and the `serve` entry point, shared by this crate's binary and by
//! `demo-app up`, which runs the store in-process under its own `store` subcommand.

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::RangedU64ValueParser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::amqp::{
    AmqpConfig, CertLogin, Definitions, DefinitionsError, Node, Tls, TlsConfig, TlsListener,
};
use crate::config::Config;

/// Where the management API listens unless told otherwise.
const DEFAULT_MANAGEMENT_BIND: &str = "127.0.0.1:15673";

/// The store's flags; each can also come from a `STORE_*` environment variable.
/// Derives `clap::Args` so other binaries can embed it with `#[command(flatten)]`.
#[derive(Clone, clap::Args)]
pub struct Args {
    /// Address to listen on for RESP clients (redis-cli, the redis crate, ...).
    #[arg(long, env = "STORE_BIND", default_value = "127.0.0.1:7379")]
    pub bind: String,

    /// Password clients must give with AUTH or HELLO before other commands.
    #[arg(long, env = "STORE_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,

    /// Most clients connected at once; more are refused with an error.
    #[arg(
        long,
        env = "STORE_MAX_CONNECTIONS",
        default_value_t = Config::default().max_connections,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
    )]
    pub max_connections: usize,

    /// Largest request in bytes (key, value and framing); bigger ones are refused and the
    /// connection closed.
    #[arg(
        long,
        env = "STORE_MAX_FRAME_BYTES",
        default_value_t = Config::default().max_frame_bytes,
        value_parser = RangedU64ValueParser::<usize>::new().range(1024..),
    )]
    pub max_frame_bytes: usize,

    /// Active expiry cycles per second (like Redis' hz): how soon unread expired keys
    /// are removed.
    #[arg(
        long,
        env = "STORE_EXPIRY_HZ",
        default_value_t = Config::default().expiry_hz,
        value_parser = clap::value_parser!(u32).range(1..=500),
    )]
    pub expiry_hz: u32,

    /// Address of the embedded AMQP 0-9-1 broker (RabbitMQ-compatible; user guest/guest
    /// from loopback). Port 0 picks a free port; the log line `amqp listening on ADDR`
    /// names it.
    #[arg(long, env = "STORE_AMQP_BIND", default_value = "127.0.0.1:5673")]
    pub amqp_bind: String,

    /// Bytes of AMQP messages held (queued, being delivered or awaiting acks: bodies,
    /// properties and 512 bytes of bookkeeping each) above which publishing connections
    /// are blocked (connection.blocked) until consumers catch up, like RabbitMQ's memory
    /// high watermark. Default: 40% of physical memory.
    #[arg(long, env = "STORE_AMQP_MEMORY_HIGH_WATERMARK")]
    pub amqp_memory_high_watermark: Option<u64>,

    /// Milliseconds a delivery may stay unacknowledged before its channel is closed with
    /// 406 PRECONDITION_FAILED and its messages go back to their queues, as RabbitMQ's
    /// `consumer_timeout` does (30 minutes by default there too); 0 turns it off.
    #[arg(
        long,
        env = "STORE_AMQP_CONSUMER_TIMEOUT",
        value_name = "MS",
        default_value_t = 1_800_000
    )]
    pub amqp_consumer_timeout: u64,

    /// RabbitMQ definitions JSON (as `rabbitmqctl export_definitions` writes it) with the
    /// broker's users, vhosts and permissions, and exchanges, queues and bindings to
    /// declare at start. Without it and without --amqp-user: guest/guest on `/`, from
    /// loopback only.
    #[arg(long, env = "STORE_AMQP_DEFINITIONS", value_name = "FILE")]
    pub amqp_definitions: Option<PathBuf>,

    /// An administrator with every permission on vhost `/` (repeatable; in the
    /// environment, comma-separated).
    #[arg(
        long,
        env = "STORE_AMQP_USERS",
        value_name = "NAME:PASSWORD",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub amqp_user: Vec<String>,

    /// Address of the broker's management HTTP API and page (RabbitMQ's management
    /// plugin, for users tagged administrator or management). Default 127.0.0.1:15673,
    /// served only if free (several stores on one machine cannot all have it); an
    /// address given here must bind.
    #[arg(long, env = "STORE_AMQP_MANAGEMENT_BIND", value_name = "ADDR")]
    pub amqp_management_bind: Option<String>,

    /// Also serve the management API over HTTPS on this address (RabbitMQ's
    /// `management.ssl`), with --amqp-tls-cert and --amqp-tls-key; no client certificate
    /// is asked for. Port 0 picks a free port; the log line
    /// `amqp management https listening on ADDR` names it.
    #[arg(
        long,
        env = "STORE_AMQP_MANAGEMENT_TLS_BIND",
        value_name = "ADDR",
        requires = "amqp_tls_cert",
        conflicts_with = "no_amqp_management"
    )]
    pub amqp_management_tls_bind: Option<String>,

    /// Do not serve the management HTTP API.
    #[arg(long, env = "STORE_NO_AMQP_MANAGEMENT")]
    pub no_amqp_management: bool,

    /// Directory where the AMQP broker keeps durable exchanges, queues and bindings and the
    /// persistent messages in durable queues, one subdirectory per vhost (created if
    /// missing; relative paths start at the working directory). A restart with the same
    /// directory brings them back. One process at a time may use a directory.
    #[arg(long, env = "STORE_AMQP_DATA_DIR", default_value = "data/amqp")]
    pub amqp_data_dir: PathBuf,

    /// Keep all AMQP state in memory: nothing is written to disk and nothing survives a
    /// restart.
    #[arg(long, env = "STORE_AMQP_NO_PERSIST")]
    pub amqp_no_persist: bool,

    /// Address of the broker's TLS listener (amqps, RabbitMQ's `listeners.ssl`), served
    /// when --amqp-tls-cert and --amqp-tls-key are given. Port 0 picks a free port; the
    /// log line `amqps listening on ADDR` names it.
    #[arg(long, env = "STORE_AMQPS_BIND", default_value = "127.0.0.1:5674")]
    pub amqps_bind: String,

    /// PEM file with the amqps listener's certificate, then any intermediates.
    #[arg(
        long,
        env = "STORE_AMQP_TLS_CERT",
        value_name = "FILE",
        requires = "amqp_tls_key"
    )]
    pub amqp_tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --amqp-tls-cert.
    #[arg(
        long,
        env = "STORE_AMQP_TLS_KEY",
        value_name = "FILE",
        requires = "amqp_tls_cert"
    )]
    pub amqp_tls_key: Option<PathBuf>,

    /// PEM file with the CAs that sign client certificates: amqps clients are asked for
    /// one and a certificate they present must verify (RabbitMQ's `verify_peer`).
    #[arg(
        long,
        env = "STORE_AMQP_TLS_CA",
        value_name = "FILE",
        requires = "amqp_tls_cert"
    )]
    pub amqp_tls_ca: Option<PathBuf>,

    /// Refuse amqps clients without a certificate --amqp-tls-ca signed (RabbitMQ's
    /// `fail_if_no_peer_cert`).
    #[arg(
        long,
        env = "STORE_AMQP_TLS_REQUIRE_CLIENT_CERT",
        requires = "amqp_tls_ca"
    )]
    pub amqp_tls_require_client_cert: bool,

    /// Let amqps clients whose certificate --amqp-tls-ca verified log in with SASL
    /// EXTERNAL, without a password, as the user the certificate names: its whole subject
    /// (`O=…,CN=…`, as the management API shows it) or its common name. RabbitMQ's
    /// rabbitmq_auth_mechanism_ssl with `ssl_cert_login_from`. Off by default.
    #[arg(
        long,
        env = "STORE_AMQP_TLS_CERT_LOGIN",
        value_name = "FROM",
        requires = "amqp_tls_ca"
    )]
    pub amqp_tls_cert_login: Option<CertLogin>,

    /// Do not run the AMQP broker; serve RESP only.
    #[arg(long, env = "STORE_NO_AMQP")]
    pub no_amqp: bool,

    /// Threads the AMQP broker runs on, apart from the RESP server's. One (the default)
    /// spends the least CPU per message: routing takes one lock anyway, and a second
    /// thread costs a cross-thread wake-up for many messages. More spread socket and
    /// framing work over the cores, for a big machine where many connections are busy.
    #[arg(long, env = "STORE_AMQP_THREADS", default_value = "1")]
    pub amqp_threads: NonZeroUsize,
}

impl Args {
    /// The server configuration these flags describe. An empty password means none, as
    /// with Redis' `requirepass ""`.
    pub fn config(&self) -> Config {
        Config {
            requirepass: self.requirepass.clone().filter(|p| !p.is_empty()),
            max_connections: self.max_connections,
            max_frame_bytes: self.max_frame_bytes,
            expiry_hz: self.expiry_hz,
        }
    }

    /// The amqps listener's TLS files, when a certificate and key are given.
    pub fn tls_config(&self) -> Option<TlsConfig> {
        Some(TlsConfig {
            cert: self.amqp_tls_cert.clone()?,
            key: self.amqp_tls_key.clone()?,
            ca: self.amqp_tls_ca.clone(),
            require_client_cert: self.amqp_tls_require_client_cert,
        })
    }

    /// The broker's users and vhosts: the definitions file, plus each --amqp-user; the
    /// default guest account only when neither is given.
    pub fn amqp_definitions(&self) -> Result<Definitions, DefinitionsError> {
        let mut definitions = match &self.amqp_definitions {
            Some(path) => Definitions::load(path)?,
            None if self.amqp_user.is_empty() => return Ok(Definitions::default()),
            None => Definitions::empty(),
        };
        for spec in &self.amqp_user {
            definitions.add_admin_spec(spec)?;
        }
        Ok(definitions)
    }
}

/// Shows everything but the password, so logging the flags cannot leak it.
impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("bind", &self.bind)
            .field("amqp_bind", &(!self.no_amqp).then_some(&self.amqp_bind))
            .field("amqp_definitions", &self.amqp_definitions)
            .field(
                "amqps_bind",
                &(!self.no_amqp && self.amqp_tls_cert.is_some()).then_some(&self.amqps_bind),
            )
            .field("amqp_tls_cert", &self.amqp_tls_cert)
            .field("amqp_tls_ca", &self.amqp_tls_ca)
            .field(
                "amqp_threads",
                &(!self.no_amqp).then_some(self.amqp_threads),
            )
            .field(
                "amqp_data_dir",
                &(!self.no_amqp && !self.amqp_no_persist).then_some(&self.amqp_data_dir),
            )
            .field(
                "amqp_users",
                &self
                    .amqp_user
                    .iter()
                    .map(|u| u.split(':').next().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .field(
                "amqp_management_bind",
                &(!self.no_amqp && !self.no_amqp_management).then(|| {
                    self.amqp_management_bind
                        .as_deref()
                        .unwrap_or(DEFAULT_MANAGEMENT_BIND)
                }),
            )
            .field("config", &self.config())
            .finish()
    }
}

/// Binds `args.bind` (and unless `--no-amqp`, `args.amqp_bind` and the management
/// API's `args.amqp_management_bind`), logs `session-store listening on ADDR`,
/// `amqp listening on ADDR` and `amqp management listening on ADDR`, and serves them
/// until `shutdown` completes.
pub async fn serve(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = if args.no_amqp {
        None
    } else {
        let definitions = args.amqp_definitions()?;
        let config = AmqpConfig {
            definitions,
            memory_high_watermark: args
                .amqp_memory_high_watermark
                .unwrap_or_else(crate::amqp::default_watermark),
            data_dir: (!args.amqp_no_persist).then(|| args.amqp_data_dir.clone()),
            cert_login: args.amqp_tls_cert_login,
            consumer_timeout: (args.amqp_consumer_timeout > 0)
                .then(|| Duration::from_millis(args.amqp_consumer_timeout)),
            ..AmqpConfig::default()
        };
        Some(Node::open(config).await?)
    };
    let listener = TcpListener::bind(&args.bind).await.with_context(|| {
        format!(
            "cannot listen on {}; is another server using it? Choose another address with --bind (or STORE_BIND)",
            args.bind
        )
    })?;
    let amqp_listener = if node.is_none() {
        None
    } else {
        Some(TcpListener::bind(&args.amqp_bind).await.with_context(|| {
            format!(
                "cannot listen for AMQP on {}; is another broker using it? Choose another address with --amqp-bind (or STORE_AMQP_BIND), or turn the broker off with --no-amqp",
                args.amqp_bind
            )
        })?)
    };
    let tls_listener = match (&node, args.tls_config()) {
        (Some(_), Some(config)) => {
            let tls = Tls::load(&config).context("cannot serve amqps")?;
            let listener = TcpListener::bind(&args.amqps_bind).await.with_context(|| {
                format!(
                    "cannot listen for amqps on {}; is another broker using it? Choose another address with --amqps-bind (or STORE_AMQPS_BIND)",
                    args.amqps_bind
                )
            })?;
            Some(TlsListener { listener, tls })
        }
        _ => None,
    };
    let https_listener = match (&tls_listener, &args.amqp_management_tls_bind) {
        (Some(tls), Some(addr)) => {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot listen for the management API over HTTPS on {addr}; choose another address with --amqp-management-tls-bind (or STORE_AMQP_MANAGEMENT_TLS_BIND)"
                )
            })?;
            Some((listener, tls.tls.https.clone()))
        }
        _ => None,
    };
    let management_listener = match &args.amqp_management_bind {
        _ if node.is_none() || args.no_amqp_management => None,
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for the AMQP management API on {addr}; is RabbitMQ's management plugin using it? Choose another address with --amqp-management-bind (or STORE_AMQP_MANAGEMENT_BIND), or turn it off with --no-amqp-management"
            )
        })?),
        None => match TcpListener::bind(DEFAULT_MANAGEMENT_BIND).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                warn!(
                    "amqp management API not served: cannot listen on {DEFAULT_MANAGEMENT_BIND} ({e}); choose an address with --amqp-management-bind"
                );
                None
            }
        },
    };
    if management_listener.is_none() && https_listener.is_some() {
        warn!(
            "amqp management API not served over HTTPS either: it is served only beside its HTTP listener"
        );
    }
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    info!("session-store listening on {addr}");
    let stop = CancellationToken::new();
    let amqp = async {
        if let (Some(listener), Some(node)) = (amqp_listener, node.clone()) {
            match listener.local_addr() {
                Ok(addr) => info!("amqp listening on {addr}"),
                Err(e) => warn!("cannot read the AMQP listener's address: {e}"),
            }
            if let Some(Ok(addr)) = tls_listener.as_ref().map(|t| t.listener.local_addr()) {
                info!("amqps listening on {addr}");
            }
            crate::amqp::serve_on_own_threads(
                listener,
                tls_listener,
                node,
                args.amqp_threads,
                stop.clone(),
            )
            .await
            .context("cannot start the AMQP broker's threads")?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let management = async {
        if let (Some(listener), Some(node)) = (management_listener, node.clone()) {
            match listener.local_addr() {
                Ok(addr) => info!("amqp management listening on {addr}"),
                Err(e) => warn!("cannot read the management listener's address: {e}"),
            }
            if let Some(Ok(addr)) = https_listener.as_ref().map(|(l, _)| l.local_addr()) {
                info!("amqp management https listening on {addr}");
            }
            crate::amqp::management::serve_with_https(
                listener,
                https_listener,
                node,
                stop.clone().cancelled_owned(),
            )
            .await;
        }
    };
    let signal = async {
        shutdown.await;
        stop.cancel();
    };
    let (resp, amqp, (), ()) = tokio::join!(
        crate::server::run(listener, args.config(), stop.clone().cancelled_owned()),
        amqp,
        management,
        signal
    );
    resp?;
    amqp?;
    info!("session-store stopped");
    Ok(())
}
