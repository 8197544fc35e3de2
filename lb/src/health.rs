//! Active health checks: every backend, up or down, is probed with `GET <health path>` on
//! a fixed interval, so a backend that was taken out comes back by itself.
//!
//! Probes use a fresh connection each time (no pooling), like HAProxy's checks, so they
//! also catch a backend that no longer accepts connections. State flips follow the
//! rise/fall hysteresis in [`Backend::record_check`].

use std::sync::Arc;

use bytes::Bytes;
use http::header::USER_AGENT;
use http::uri::{Scheme, Uri};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, Backends, Transition};
use crate::config::HealthConfig;
use crate::error::describe;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Starts one probe loop per backend. The loops stop when the returned set is dropped,
/// which ties them to the server that owns it.
pub fn spawn(backends: Arc<Backends>, config: HealthConfig) -> JoinSet<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_nodelay(true);
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    for index in 0..backends.all().len() {
        let backends = Arc::clone(&backends);
        let (client, config) = (client.clone(), Arc::clone(&config));
        tasks.spawn(async move {
            if let Some(backend) = backends.all().get(index) {
                probe_loop(backend, &client, &config).await;
            }
        });
    }
    tasks
}

async fn probe_loop(backend: &Backend, client: &ProbeClient, config: &HealthConfig) {
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(backend.authority.clone())
        .path_and_query(config.path.clone())
        .build();
    let uri = match uri {
        Ok(uri) => uri,
        Err(e) => {
            error!(
                "cannot build the health check URL of backend {}: {e}",
                backend.id
            );
            return;
        }
    };
    let mut ticker = interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(client, &uri, config).await;
        match (
            backend.record_check(result.is_ok(), config.rise, config.fall),
            result,
        ) {
            (Some(Transition::Up), _) => info!(
                "backend {} is up: {} health checks passed in a row",
                backend.id, config.rise
            ),
            (Some(Transition::Down), Err(reason)) => warn!(
                "backend {} is down: {} health checks failed in a row, last: {reason}",
                backend.id, config.fall
            ),
            (_, Err(reason)) => debug!("health check of backend {} failed: {reason}", backend.id),
            (_, Ok(())) => {}
        }
    }
}

async fn probe(client: &ProbeClient, uri: &Uri, config: &HealthConfig) -> Result<(), String> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri.clone();
    request
        .headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("lb-health-check"));
    match timeout(config.timeout, client.request(request)).await {
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
        Ok(Err(e)) => Err(describe(&e)),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("{} answered {}", config.path, response.status())),
    }
}
