//! The server's Prometheus metrics (`GET /metrics`, text exposition format): requests by
//! route and status, tokens in and out, queue depth, batch size, time to first token,
//! inter-token latency and request duration; the KV cache's fill, prefix-cache hits and
//! preemptions.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

/// Counters and histograms shared by the HTTP layer and the engine loop.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    /// Requests whose client went away before they finished.
    pub cancelled: Counter,
    /// Requests refused with 429.
    pub rejected: Counter,
    /// Requests accepted and not yet admitted to the batch.
    pub queue_depth: Gauge,
    /// Requests in the running batch.
    pub batch_size: Gauge,
    /// Tokens in the KV cache (running sequences and cached prefixes).
    pub kv_cache_tokens: Gauge,
    /// The KV budget in tokens (0: none).
    pub kv_budget_tokens: Gauge,
    /// Prompt tokens computed, and those copied from the prefix cache instead.
    pub prefill_tokens: Counter,
    pub prefix_hit_tokens: Counter,
    /// Generations sent back to the queue to free KV memory.
    pub preemptions: Counter,
    /// Sequences decoded by each engine step (how full batches really are).
    step_batch: Histogram,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubeswift_serve");
        let m = Metrics {
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            cancelled: Counter::default(),
            rejected: Counter::default(),
            queue_depth: Gauge::default(),
            batch_size: Gauge::default(),
            kv_cache_tokens: Gauge::default(),
            kv_budget_tokens: Gauge::default(),
            prefill_tokens: Counter::default(),
            prefix_hit_tokens: Counter::default(),
            preemptions: Counter::default(),
            step_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 1 ms .. ~33 s
            time_to_first_token: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 0.5 ms .. ~4 s
            inter_token_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            // 10 ms .. ~5.5 min
            request_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of requests that finished",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Tokens generated for requests that finished",
            m.generation_tokens.clone(),
        );
        registry.register(
            "cancelled_requests",
            "Generations dropped because the client disconnected",
            m.cancelled.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused because the queue was full (429)",
            m.rejected.clone(),
        );
        registry.register(
            "queue_depth",
            "Generations waiting for a batch slot",
            m.queue_depth.clone(),
        );
        registry.register(
            "batch_size",
            "Generations in the running batch",
            m.batch_size.clone(),
        );
        registry.register(
            "kv_cache_tokens",
            "Tokens held in the KV cache (running sequences and cached prefixes)",
            m.kv_cache_tokens.clone(),
        );
        registry.register(
            "kv_cache_budget_tokens",
            "Most tokens the KV cache may hold (0: no budget)",
            m.kv_budget_tokens.clone(),
        );
        registry.register(
            "prefill_tokens",
            "Prompt tokens computed by prefill",
            m.prefill_tokens.clone(),
        );
        registry.register(
            "prefix_cache_hit_tokens",
            "Prompt tokens copied from the prefix cache instead of computed",
            m.prefix_hit_tokens.clone(),
        );
        registry.register(
            "preemptions",
            "Generations sent back to the queue to free KV cache memory",
            m.preemptions.clone(),
        );
        registry.register(
            "step_batch_size",
            "Sequences decoded together by one engine step",
            m.step_batch.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From request arrival to its first generated text",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Between two pieces of generated text of one generation",
            m.inter_token_latency.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "From request arrival to its last byte of generated output",
            m.request_duration.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                status,
            })
            .inc();
    }

    /// One engine step over `sequences` sequences.
    pub fn step(&self, sequences: usize) {
        self.step_batch.observe(sequences as f64);
    }

    pub fn first_token(&self, after: Duration) {
        self.time_to_first_token.observe(after.as_secs_f64());
    }

    pub fn inter_token(&self, gap: Duration) {
        self.inter_token_latency.observe(gap.as_secs_f64());
    }

    pub fn finished(&self, took: Duration) {
        self.request_duration.observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_series() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200);
        m.generation_tokens.inc_by(5);
        m.first_token(Duration::from_millis(3));
        m.queue_depth.set(2);
        let text = m.encode();
        for needle in [
            "kubeswift_serve_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
            "kubeswift_serve_generation_tokens_total 5",
            "kubeswift_serve_queue_depth 2",
            "kubeswift_serve_time_to_first_token_seconds_count 1",
            "kubeswift_serve_inter_token_latency_seconds_bucket",
            "kubeswift_serve_kv_cache_tokens 0",
            "kubeswift_serve_prefix_cache_hit_tokens_total 0",
            "kubeswift_serve_preemptions_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
