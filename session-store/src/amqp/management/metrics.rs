//! Prometheus metrics under the names of RabbitMQ's `rabbitmq_prometheus` plugin, so its
//! Grafana dashboards and alert rules read this broker unchanged: `/metrics` with node
//! totals, `/metrics/per-object` with each queue's series labelled `vhost` and `queue`.
//! Like the plugin's endpoint they need no login (the listener is loopback by default).
//! Built fresh from the broker's counters at each scrape: nothing is kept between scrapes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing::warn;

use super::json::{MANAGEMENT_VERSION, NODE, resident_bytes};
use super::memory_alarm;
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::statvfs::statvfs;

use crate::amqp::churn;
use crate::amqp::node::Node;
use crate::amqp::stats::MessageStats;

/// `GET /metrics`: node totals.
pub async fn aggregated(State(node): State<Arc<Node>>) -> Response {
    scrape(&node, false)
}

/// `GET /metrics/per-object`: the totals, and every queue's own series.
pub async fn per_object(State(node): State<Arc<Node>>) -> Response {
    scrape(&node, true)
}

fn scrape(node: &Node, per_queue: bool) -> Response {
    let mut metrics = Metrics::default();
    collect(node, per_queue, &mut metrics);
    let mut out = Vec::new();
    let encoder = TextEncoder::new();
    match metrics
        .error
        .map_or_else(|| encoder.encode(&metrics.registry.gather(), &mut out), Err)
    {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], out).into_response(),
        Err(e) => {
            warn!("amqp metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn collect(node: &Node, per_queue: bool, m: &mut Metrics) {
    let (totals, _) = node.overview();
    let protocol = [("protocol", "amqp091")];
    m.gauge(
        "rabbitmq_connections",
        "Connections currently open",
        &[],
        totals.connections as i64,
    );
    m.gauge(
        "rabbitmq_channels",
        "Channels currently open",
        &[],
        totals.channels as i64,
    );
    m.gauge(
        "rabbitmq_consumers",
        "Consumers currently connected",
        &[],
        totals.consumers as i64,
    );
    m.gauge(
        "rabbitmq_queues",
        "Queues available",
        &[],
        totals.queues as i64,
    );
    m.gauge(
        "rabbitmq_global_consumers",
        "Current number of consumers",
        &protocol,
        totals.consumers as i64,
    );

    let queue_series: [(&str, &str); 8] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
        ),
        (
            "rabbitmq_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
        ),
        (
            "rabbitmq_queue_messages_unacked_bytes",
            "Size in bytes of all unacknowledged messages",
        ),
        (
            "rabbitmq_queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue"),
        (
            "rabbitmq_queue_messages_published_total",
            "Total number of messages published to queues",
        ),
    ];
    let mut sums = [0i64; 8];
    for vhost in node.vhosts() {
        for q in vhost.queues() {
            let values = [
                q.messages_ready,
                q.messages_unacknowledged,
                q.messages_ready + q.messages_unacknowledged,
                q.message_bytes_ready,
                q.message_bytes_unacknowledged,
                q.message_bytes_ready + q.message_bytes_unacknowledged,
                q.consumers as u64,
                q.stats.publish,
            ]
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            for (sum, v) in sums.iter_mut().zip(values) {
                *sum = sum.saturating_add(v);
            }
            if per_queue {
                let labels = [("vhost", vhost.name()), ("queue", q.name.as_str())];
                for ((name, help), v) in queue_series.iter().zip(values) {
                    m.series(name, help, &labels, v);
                }
            }
        }
    }
    if !per_queue {
        for ((name, help), v) in queue_series.iter().zip(sums) {
            m.series(name, help, &[], v);
        }
    }

    for (name, help, value) in global_counters(&totals.stats) {
        m.counter(name, help, &protocol, value);
    }

    for (name, help, value) in channel_counters(&totals.stats) {
        m.counter(name, help, &[], value);
    }
    m.gauge(
        "rabbitmq_channel_consumers",
        "Consumers on a channel",
        &[],
        totals.consumers as i64,
    );
    m.gauge(
        "rabbitmq_channel_messages_unacked",
        "Delivered but not yet acknowledged messages",
        &[],
        i64::try_from(totals.messages_unacknowledged).unwrap_or(i64::MAX),
    );
    let churn = node.churn();
    for event in churn::Event::ALL {
        let (name, help) = event.metric();
        m.counter(name, help, &[], churn.total(event));
    }

    for c in node.auth_attempts().counts() {
        let labels = [("protocol", c.protocol.name())];
        for (name, help, value) in [
            (
                "rabbitmq_auth_attempts_total",
                "Total number of authorization attempts",
                c.total(),
            ),
            (
                "rabbitmq_auth_attempts_succeeded_total",
                "Total number of successful authentication attempts",
                c.succeeded,
            ),
            (
                "rabbitmq_auth_attempts_failed_total",
                "Total number of failed authentication attempts",
                c.failed,
            ),
        ] {
            m.counter(name, help, &labels, value);
        }
    }

    let resident = i64::try_from(resident_bytes()).unwrap_or(i64::MAX);
    let limit = i64::try_from(node.config().memory_high_watermark).unwrap_or(i64::MAX);
    m.gauge(
        "rabbitmq_process_resident_memory_bytes",
        "Memory used in bytes",
        &[],
        resident,
    );
    m.gauge(
        "rabbitmq_resident_memory_limit_bytes",
        "Memory high watermark in bytes (of messages held, here)",
        &[],
        limit,
    );
    m.gauge(
        "rabbitmq_alarms_memory_used_watermark",
        "is 1 if VM memory watermark alarm is in effect",
        &[],
        i64::from(memory_alarm(node)),
    );
    m.gauge(
        "rabbitmq_alarms_free_disk_space_watermark",
        "is 1 if free disk space watermark alarm is in effect",
        &[],
        0,
    );
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    m.gauge(
        "rabbitmq_process_open_fds",
        "Open file descriptors",
        &[],
        fds as i64,
    );
    if let Ok((max_fds, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let max_fds = i64::try_from(max_fds).unwrap_or(i64::MAX);
        m.gauge(
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            &[],
            max_fds,
        );
        m.gauge(
            "rabbitmq_process_max_tcp_sockets",
            "Open TCP sockets limit (the descriptors limit: each socket takes one)",
            &[],
            max_fds,
        );
    }
    m.gauge(
        "rabbitmq_process_open_tcp_sockets",
        "Open TCP sockets (of client connections)",
        &[],
        totals.connections as i64,
    );
    let data = node
        .config()
        .data_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    if let Ok(fs) = statvfs(&data) {
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        m.gauge(
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes (where the data directory is)",
            &[],
            i64::try_from(free).unwrap_or(i64::MAX),
        );
    }
    m.gauge(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes (none: publishers are never blocked for disk space)",
        &[],
        0,
    );
    m.gauge(
        "rabbitmq_erlang_uptime_seconds",
        "Node uptime",
        &[],
        i64::try_from(node.uptime().as_secs()).unwrap_or(i64::MAX),
    );
    m.gauge(
        "rabbitmq_build_info",
        "RabbitMQ version info (the version whose behaviour this broker follows)",
        &[
            ("rabbitmq_version", MANAGEMENT_VERSION),
            ("product_name", "session-store"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    m.gauge(
        "rabbitmq_identity_info",
        "RabbitMQ node & cluster identity info",
        &[
            ("rabbitmq_node", NODE),
            ("rabbitmq_cluster", &node.cluster_name()),
        ],
        1,
    );
}

/// The plugin's `rabbitmq_channel_*` counters, summed over every channel since the start
/// (RabbitMQ's sum forgets closed channels; these never go back).
fn channel_counters(s: &MessageStats) -> [(&'static str, &'static str, u64); 10] {
    [
        (
            "rabbitmq_channel_messages_published_total",
            "Total number of messages published into an exchange on a channel",
            s.publish,
        ),
        (
            "rabbitmq_channel_messages_confirmed_total",
            "Total number of messages published into an exchange and confirmed on the channel",
            s.confirm,
        ),
        (
            "rabbitmq_channel_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            s.return_unroutable,
        ),
        (
            "rabbitmq_channel_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            s.drop_unroutable,
        ),
        (
            "rabbitmq_channel_get_ack_total",
            "Total number of messages fetched with basic.get in manual acknowledgement mode",
            s.get,
        ),
        (
            "rabbitmq_channel_get_total",
            "Total number of messages fetched with basic.get in automatic acknowledgement mode",
            s.get_no_ack,
        ),
        (
            "rabbitmq_channel_messages_delivered_ack_total",
            "Total number of messages delivered to consumers in manual acknowledgement mode",
            s.deliver,
        ),
        (
            "rabbitmq_channel_messages_delivered_total",
            "Total number of messages delivered to consumers in automatic acknowledgement mode",
            s.deliver_no_ack,
        ),
        (
            "rabbitmq_channel_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            s.redeliver,
        ),
        (
            "rabbitmq_channel_messages_acked_total",
            "Total number of messages acknowledged by consumers",
            s.ack,
        ),
    ]
}

/// The plugin's `rabbitmq_global_messages_*` counters from the node's message counters.
fn global_counters(s: &MessageStats) -> [(&'static str, &'static str, u64); 12] {
    let unroutable = s.return_unroutable + s.drop_unroutable;
    [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            s.publish,
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            s.publish.saturating_sub(unroutable),
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            s.drop_unroutable,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            s.return_unroutable,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            s.confirm,
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            s.deliver_get(),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            s.deliver,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            s.deliver_no_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            s.get,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            s.get_no_ack,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            s.redeliver,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            s.ack,
        ),
    ]
}

/// One scrape's registry. The first registration error is kept and answered with a 500
/// (names and labels are fixed here, so one means a bug, not bad input).
#[derive(Default)]
struct Metrics {
    registry: Registry,
    gauges: HashMap<String, IntGaugeVec>,
    counters: HashMap<String, IntCounterVec>,
    error: Option<prometheus::Error>,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: i64) {
        self.add(name, help, labels, value, false);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.add(name, help, labels, value, true);
    }

    /// A queue series: a counter when its name says so.
    fn series(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: i64) {
        self.add(name, help, labels, value, name.ends_with("_total"));
    }

    fn add(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: i64, counter: bool) {
        if self.error.is_some() {
            return;
        }
        let keys: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        let values: Vec<&str> = labels.iter().map(|(_, v)| *v).collect();
        let result = if counter {
            self.counter_family(name, help, &keys)
                .and_then(|c| c.get_metric_with_label_values(&values))
                .map(|c| c.inc_by(value.max(0).unsigned_abs()))
        } else {
            self.gauge_family(name, help, &keys)
                .and_then(|g| g.get_metric_with_label_values(&values))
                .map(|g| g.set(value))
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    /// The family `name`, registered on its first series.
    fn gauge_family(
        &mut self,
        name: &str,
        help: &str,
        keys: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        if let Some(family) = self.gauges.get(name) {
            return Ok(family.clone());
        }
        let family = IntGaugeVec::new(Opts::new(name, help), keys)?;
        self.registry.register(Box::new(family.clone()))?;
        self.gauges.insert(name.to_string(), family.clone());
        Ok(family)
    }

    fn counter_family(
        &mut self,
        name: &str,
        help: &str,
        keys: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        if let Some(family) = self.counters.get(name) {
            return Ok(family.clone());
        }
        let family = IntCounterVec::new(Opts::new(name, help), keys)?;
        self.registry.register(Box::new(family.clone()))?;
        self.counters.insert(name.to_string(), family.clone());
        Ok(family)
    }
}
