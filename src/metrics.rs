//! Counters, gauges and latency histograms shared by the engine thread and the HTTP workers,
//! rendered in Prometheus' text format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds in seconds: from sub-millisecond CPU decode steps to minute-long requests.
const LATENCY_BOUNDS: [f64; 18] =
    [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in LATENCY_BOUNDS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 * 1e-9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub request_failures: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, n: usize) {
        gauge.store(n as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let scalars: [(&str, &str, &str, &AtomicU64); 10] = [
            ("flashseek_requests_total", "counter", "HTTP requests received", &self.requests),
            ("flashseek_request_failures_total", "counter", "requests answered with an error", &self.request_failures),
            ("flashseek_prompt_tokens_total", "counter", "prompt tokens of finished sequences", &self.prompt_tokens),
            ("flashseek_generation_tokens_total", "counter", "tokens generated", &self.generation_tokens),
            (
                "flashseek_cached_tokens_total",
                "counter",
                "prompt tokens served from the prefix cache",
                &self.cached_tokens,
            ),
            ("flashseek_preemptions_total", "counter", "sequences preempted for KV blocks", &self.preemptions),
            ("flashseek_num_running_reqs", "gauge", "sequences in the running batch", &self.running),
            ("flashseek_num_waiting_reqs", "gauge", "sequences waiting to start", &self.waiting),
            ("flashseek_kv_blocks_used", "gauge", "KV cache blocks held by sequences", &self.kv_blocks_used),
            ("flashseek_kv_blocks_total", "gauge", "KV cache blocks in the pool", &self.kv_blocks_total),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        }
        self.time_to_first_token.render(&mut out, "flashseek_time_to_first_token_seconds", "time to first token");
        self.inter_token_latency.render(
            &mut out,
            "flashseek_inter_token_latency_seconds",
            "time between streamed tokens",
        );
        self.e2e_latency.render(
            &mut out,
            "flashseek_e2e_request_latency_seconds",
            "request latency, arrival to last token",
        );
        out
    }
}
