"""Prometheus metrics of one server, in their own registry (no process-wide globals); the
server's ``Observer`` (phibox.device.observe)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (0.5, 1, 2, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512)


class Metrics:
    """One server's counters and histograms, fed through the Observer methods below."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("phibox_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.rejections = Counter("phibox_rejections", "Questions turned away", ["reason"], registry=r)
        self.answer_cache_lookups = Counter("phibox_answer_cache", "Repeated-question lookups by result (hit, miss)",
                                            ["result"], registry=r)
        self.queue_depth_gauge = Gauge("phibox_queue_depth", "Questions waiting for the generation worker", registry=r)
        self.generating_gauge = Gauge("phibox_generating", "1 while the worker generates", registry=r)
        self.model_ready_gauge = Gauge("phibox_model_ready", "1 when a model is loaded and answering", registry=r)
        self.ttft = Histogram("phibox_time_to_first_token_seconds", "Queue exit to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_per_s = Histogram("phibox_decode_tokens_per_second", "Decode speed per answer",
                                      buckets=RATE_BUCKETS, registry=r)
        self.retrieval_seconds = Histogram("phibox_retrieval_seconds", "Hybrid retrieval latency",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("phibox_queue_wait_seconds", "Time a question waited for the worker",
                                    buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- phibox.device.observe.Observer ------------------------------------------------------
    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def generating(self, busy: bool) -> None:
        self.generating_gauge.set(1 if busy else 0)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def decode_rate(self, tokens_per_s: float) -> None:
        self.tokens_per_s.observe(tokens_per_s)

    def retrieval(self, seconds: float) -> None:
        self.retrieval_seconds.observe(seconds)

    def model_ready(self, ready: bool) -> None:
        self.model_ready_gauge.set(1 if ready else 0)

    def answer_cache(self, hit: bool) -> None:
        self.answer_cache_lookups.labels(result="hit" if hit else "miss").inc()
