//! Prometheus metrics of the server, in the OpenMetrics text format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub failovers: Counter,
    pub active: Gauge,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub time_per_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sunswarm");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP API requests by endpoint and status code",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        let completion_tokens = Counter::default();
        registry.register(
            "completion_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Route repairs during generations (a peer died, timed out or refused)",
            failovers.clone(),
        );
        let active = Gauge::default();
        registry.register("active_requests", "Generations running now", active.clone());
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "request_duration_seconds",
            "Time from a generation request to its last token",
            duration.clone(),
        );
        let ttft = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "time_to_first_token_seconds",
            "Time from a generation request to its first token",
            ttft.clone(),
        );
        let time_per_token = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "time_per_output_token_seconds",
            "Mean time between generated tokens of a request",
            time_per_token.clone(),
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            failovers,
            active,
            duration,
            ttft,
            time_per_token,
        }
    }
}

impl Metrics {
    pub fn count(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
