//! Prometheus metrics, named by stage (TEI's habit): requests by method and status code,
//! end-to-end latency, queue wait, compute time, batch size and queue depth.
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The server's metrics, one registry per server (so tests in one process do not share counts).
/// Cloning shares the underlying counters.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `nudge_requests_total{method, code}`.
    pub requests: IntCounterVec,
    /// `nudge_request_duration_seconds{method}`: end-to-end handler latency.
    pub request_seconds: HistogramVec,
    /// `nudge_queue_duration_seconds{model}`: time a text waited for its batch.
    pub queue_seconds: HistogramVec,
    /// `nudge_compute_duration_seconds{model}`: encoder pass and heads per batch.
    pub compute_seconds: HistogramVec,
    /// `nudge_batch_size{model}`: texts per encoder batch.
    pub batch_size: HistogramVec,
    /// `nudge_batch_tokens{model}`: real tokens per encoder batch.
    pub batch_tokens: HistogramVec,
    /// `nudge_encoder_batches_total{model, device}`: encoder passes, by the device that ran them.
    pub encoder_batches: IntCounterVec,
    /// `nudge_queue_depth{model}`: texts waiting.
    pub queue_depth: IntGaugeVec,
    /// `nudge_dropped_total{model}`: texts dropped because their call was cancelled.
    pub dropped: IntCounterVec,
    /// `nudge_decisions_total{how}`: decisions logged, by greedy / explore / sampled.
    pub decisions: IntCounterVec,
    /// `nudge_offers_skipped_total{reason}`: offers the rules allowed but guardrails, risk or a
    /// forbidding rule removed, by reason (Conversations).
    pub offers_skipped: IntCounterVec,
    /// `nudge_handoffs_total{reason}`: turns that asked for a person, by reason (Conversations).
    pub handoffs: IntCounterVec,
    /// `nudge_cluster_events_total{event}` (`[cluster]` only): records `forwarded` to the stream
    /// (of which `duplicate`), `forward_failed` batches (retried), and versions followed from the
    /// cluster's SERVING pointers or refused (the old one kept serving): `policy_followed`,
    /// `policy_refused`, `bundle_followed`, `bundle_refused`, `strategy_followed`,
    /// `strategy_refused`, `experiment_followed`, `experiment_refused`; conversation events
    /// `events_forwarded` (`events_duplicate`, `events_forward_failed`), and the other servers'
    /// `events_read` into the KPIs (`events_malformed` ones skipped; `events_stream_recreated`:
    /// the stream was created anew and read again from its start).
    pub cluster_events: IntCounterVec,
    /// `nudge_cluster_backlog{stream}`: `decisions` or `events` logged here and not yet
    /// acknowledged by the stream.
    pub cluster_backlog: IntGaugeVec,
    /// `nudge_conversation_events_total{event, channel, arm}` (Conversations): `turn`, `nudge`,
    /// `conversation` (started), `resolved`, `handoff`, `offer`, and the outcome kinds
    /// (`shown`, `click`, `add_to_cart`, `convert`, `decline`, `opt_out`, `complaint`);
    /// `not_logged` counts events the event log failed to keep. `arm` is `experiment/arm`.
    pub conversation_events: IntCounterVec,
    /// `nudge_revenue_cents_total{channel, arm}`: revenue of reported conversions.
    pub revenue_cents: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let secs = || exponential_buckets(0.0001, 2.0, 18).unwrap_or_default();
        let requests = IntCounterVec::new(
            Opts::new("nudge_requests_total", "gRPC requests by method and status code"),
            &["method", "code"],
        );
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("nudge_request_duration_seconds", "End-to-end handler latency").buckets(secs()),
            &["method"],
        );
        let queue_seconds = HistogramVec::new(
            HistogramOpts::new("nudge_queue_duration_seconds", "Time a text waited in the batch queue").buckets(secs()),
            &["model"],
        );
        let compute_seconds = HistogramVec::new(
            HistogramOpts::new("nudge_compute_duration_seconds", "Encoder pass and heads, per batch").buckets(secs()),
            &["model"],
        );
        let batch_size = HistogramVec::new(
            HistogramOpts::new("nudge_batch_size", "Texts per encoder batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            &["model"],
        );
        let batch_tokens = HistogramVec::new(
            HistogramOpts::new("nudge_batch_tokens", "Real (unpadded) tokens per encoder batch")
                .buckets(exponential_buckets(8.0, 2.0, 12).unwrap_or_default()),
            &["model"],
        );
        let queue_depth = IntGaugeVec::new(
            Opts::new("nudge_queue_depth", "Texts waiting in the batch queue"),
            &["model"],
        );
        let decisions = IntCounterVec::new(
            Opts::new(
                "nudge_decisions_total",
                "Offer decisions logged, by how the option was chosen",
            ),
            &["how"],
        );
        let offers_skipped = IntCounterVec::new(
            Opts::new(
                "nudge_offers_skipped_total",
                "Offers allowed by the rules but not made, by reason",
            ),
            &["reason"],
        );
        let handoffs = IntCounterVec::new(
            Opts::new(
                "nudge_handoffs_total",
                "Turns that signalled a hand-off to a person, by reason",
            ),
            &["reason"],
        );
        let encoder_batches = IntCounterVec::new(
            Opts::new(
                "nudge_encoder_batches_total",
                "Encoder passes, by model and the device that ran them (cpu, cuda:N)",
            ),
            &["model", "device"],
        );
        let dropped = IntCounterVec::new(
            Opts::new(
                "nudge_dropped_total",
                "Texts dropped before compute because their call was cancelled or timed out",
            ),
            &["model"],
        );
        let cluster_events = IntCounterVec::new(
            Opts::new(
                "nudge_cluster_events_total",
                "Cluster events: records forwarded to the stream, failed batches, policy and bundle versions followed or refused",
            ),
            &["event"],
        );
        let cluster_backlog = IntGaugeVec::new(
            Opts::new(
                "nudge_cluster_backlog",
                "Decisions or conversation events logged locally and not yet acknowledged by the stream",
            ),
            &["stream"],
        );
        let conversation_events = IntCounterVec::new(
            Opts::new(
                "nudge_conversation_events_total",
                "Conversation events (turns, conversations started and resolved, hand-offs, offers, outcomes) by channel and experiment arm",
            ),
            &["event", "channel", "arm"],
        );
        let revenue_cents = IntCounterVec::new(
            Opts::new("nudge_revenue_cents_total", "Revenue of reported conversions, in cents"),
            &["channel", "arm"],
        );
        // The definitions are constants; prometheus rejects only malformed names or buckets.
        const OK: &str = "static metric definition";
        let m = Self {
            registry,
            requests: requests.expect(OK),
            request_seconds: request_seconds.expect(OK),
            queue_seconds: queue_seconds.expect(OK),
            compute_seconds: compute_seconds.expect(OK),
            batch_size: batch_size.expect(OK),
            batch_tokens: batch_tokens.expect(OK),
            encoder_batches: encoder_batches.expect(OK),
            queue_depth: queue_depth.expect(OK),
            dropped: dropped.expect(OK),
            decisions: decisions.expect(OK),
            offers_skipped: offers_skipped.expect(OK),
            handoffs: handoffs.expect(OK),
            cluster_events: cluster_events.expect(OK),
            cluster_backlog: cluster_backlog.expect(OK),
            conversation_events: conversation_events.expect(OK),
            revenue_cents: revenue_cents.expect(OK),
        };
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.request_seconds.clone()),
            Box::new(m.queue_seconds.clone()),
            Box::new(m.compute_seconds.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.batch_tokens.clone()),
            Box::new(m.encoder_batches.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.decisions.clone()),
            Box::new(m.offers_skipped.clone()),
            Box::new(m.handoffs.clone()),
            Box::new(m.cluster_events.clone()),
            Box::new(m.cluster_backlog.clone()),
            Box::new(m.conversation_events.clone()),
            Box::new(m.revenue_cents.clone()),
        ] {
            // Names are fixed and distinct, so registration cannot collide.
            let _ = m.registry.register(c);
        }
        m
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
