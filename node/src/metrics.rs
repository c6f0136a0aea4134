//! Prometheus metrics of a node (prometheus-client), served as OpenMetrics text at
//! `GET /metrics` of the API and of `run --metrics ADDR`.
//!
//! Data flow: the parts of the node count what they do into one process-wide
//! [`Metrics`] ([`global`]), as Prometheus' own clients do with their default registry:
//! the network task records every swarm, Kademlia, gossipsub, identify, ping, relay and
//! DCUtR event (libp2p's metrics, under `libp2p_`); the inference service counts the
//! sessions it holds and times each step it computes (this hop's latency); the client
//! and the API count requests, tokens and failovers; fetches count the blob bytes they
//! bring. A scrape encodes the registry as it stands. Nodes that share one process (the
//! in-process tests) share these figures.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request counter: the endpoint and the HTTP status answered.
pub type RequestLabels = Vec<(&'static str, String)>;

/// Every metric of the node, registered under the `nak_` prefix.
pub struct Metrics {
    registry: Registry,
    /// libp2p's own metrics of the swarm and its protocols.
    pub p2p: libp2p::metrics::Metrics,
    /// API requests answered, by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Prompt tokens this node's client sessions sent through the swarm.
    pub prompt_tokens: Counter,
    /// Tokens this node's client sessions generated.
    pub tokens_generated: Counter,
    /// Generations running through the API now.
    pub generations_active: Gauge,
    /// Route repairs this node's client sessions made.
    pub failovers: Counter,
    /// Inference sessions this server holds now.
    pub sessions_open: Gauge,
    /// Inference sessions this server opened.
    pub sessions_opened: Counter,
    /// Seconds this server's span took to compute one step (this hop's share of a token).
    pub step_seconds: Histogram,
    /// Rows (tokens) this server's span computed.
    pub step_rows: Counter,
    /// Blob bytes fetched from other peers.
    pub fetch_bytes: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("nak");
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        let m = Metrics {
            p2p,
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            tokens_generated: Counter::default(),
            generations_active: Gauge::default(),
            failovers: Counter::default(),
            sessions_open: Gauge::default(),
            sessions_opened: Counter::default(),
            // 100 µs to about 6.5 s.
            step_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 17)),
            step_rows: Counter::default(),
            fetch_bytes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "API requests answered, by endpoint and status", m.requests.clone());
        registry.register("prompt_tokens", "Prompt tokens sent through the swarm", m.prompt_tokens.clone());
        registry.register("tokens_generated", "Tokens generated through the swarm", m.tokens_generated.clone());
        registry.register("generations_active", "Generations running through the API", m.generations_active.clone());
        registry.register("failovers", "Route repairs made by client sessions", m.failovers.clone());
        registry.register("sessions_open", "Inference sessions this server holds", m.sessions_open.clone());
        registry.register("sessions_opened", "Inference sessions this server opened", m.sessions_opened.clone());
        registry.register("step_seconds", "Compute time of one step on this hop", m.step_seconds.clone());
        registry.register("step_rows", "Rows computed by this server's span", m.step_rows.clone());
        registry.register("fetch_bytes", "Blob bytes fetched from peers", m.fetch_bytes.clone());
        Metrics { registry, ..m }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `GET /metrics`: the process's metrics as OpenMetrics text.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], global().encode())
}

/// Serves `/metrics` alone on `listener` until the process ends (`run --metrics`).
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router::<()>()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_text() {
        let m = Metrics::new();
        m.tokens_generated.inc_by(3);
        m.requests.get_or_create(&vec![("endpoint", "/v1/completions".into()), ("status", "200".into())]).inc();
        m.step_seconds.observe(0.002);
        let text = m.encode();
        assert!(text.contains("nak_tokens_generated_total 3"), "{text}");
        assert!(text.contains("nak_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("nak_step_seconds_count 1"), "{text}");
        assert!(text.contains("nak_libp2p_swarm"), "libp2p's metrics are registered: {text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
