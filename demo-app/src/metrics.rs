//! `GET /metrics`: the node's session figures for Prometheus. Every node reports its
//! session mode; a shared-mode node with a near-cache adds what the cache has done (hits,
//! misses, evictions and updates by events, flushes on broker loss) and how far behind
//! the events run, the figures that tell whether the near-cache pays and stays coherent.
//! Built per scrape from the layer's counters with the `prometheus` crate.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use session_layer::store::NearCacheStats;

use crate::routes::AppState;

pub async fn metrics(State(state): State<AppState>) -> Response {
    let registry = Registry::new();
    let result = register(&registry, &state).and_then(|()| {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .map(|()| out)
    });
    match result {
        Ok(out) => (
            [(header::CONTENT_TYPE, TextEncoder::new().format_type())],
            out,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn register(registry: &Registry, state: &AppState) -> prometheus::Result<()> {
    let mode = IntGaugeVec::new(
        Opts::new(
            "sessions_mode_info",
            "The session mode this node runs (always 1)",
        ),
        &["node", "mode"],
    )?;
    mode.with_label_values(&[state.node.as_ref(), &state.mode.to_string()])
        .set(1);
    registry.register(Box::new(mode))?;
    if let Some(cache) = &state.near_cache {
        near_cache(registry, &cache.stats())?;
    }
    Ok(())
}

fn near_cache(registry: &Registry, s: &NearCacheStats) -> prometheus::Result<()> {
    let counters = [
        (
            "sessions_near_cache_hits_total",
            "Session reads served from this node's near-cache",
            s.hits,
        ),
        (
            "sessions_near_cache_misses_total",
            "Session reads that went to the store",
            s.misses,
        ),
        (
            "sessions_near_cache_evictions_total",
            "Cached sessions dropped because an event announced a newer version",
            s.evictions,
        ),
        (
            "sessions_near_cache_updates_total",
            "Cached sessions replaced by the newer state an event carried",
            s.updates,
        ),
        (
            "sessions_events_received_total",
            "Session-change events received",
            s.events,
        ),
        (
            "sessions_near_cache_flushes_total",
            "Times the near-cache was emptied because the broker link went down",
            s.flushes,
        ),
    ];
    for (name, help, value) in counters {
        let counter = IntCounter::new(name, help)?;
        counter.inc_by(value);
        registry.register(Box::new(counter))?;
    }
    let subscribed = IntGauge::new(
        "sessions_events_subscribed",
        "1 while the node receives session-change events (its near-cache is in use)",
    )?;
    subscribed.set(i64::from(s.subscribed));
    registry.register(Box::new(subscribed))?;
    let lag = IntGaugeVec::new(
        Opts::new(
            "sessions_event_lag_microseconds",
            "Publish-to-receipt lag of the latest session-change events, by quantile",
        ),
        &["quantile"],
    )?;
    for (quantile, value) in [("0.5", s.lag_p50_us), ("0.99", s.lag_p99_us)] {
        if let Some(us) = value {
            lag.with_label_values(&[quantile])
                .set(i64::try_from(us).unwrap_or(i64::MAX));
        }
    }
    registry.register(Box::new(lag))?;
    Ok(())
}
