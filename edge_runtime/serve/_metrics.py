"""Prometheus metrics for edge-serve: counters, gauges and histograms rendered in the text
exposition format (version 0.0.4), written here rather than taken from prometheus_client.

Why our own: the format is a few lines of text per series and stable since 2014; a device install
gains no dependency (prometheus_client is pure Python too, but brings a process-global registry
and collectors we would have to switch off); and two servers in one process (the tests) keep
separate registries. tests/test_serve.py parses our output with prometheus_client's own parser,
so a format mistake fails a test.

Names follow text-embeddings-inference (TEI, router/src/prometheus.rs and http/server.rs) where
TEI has one: te_request_count, te_request_success, te_request_failure{err}, te_request_duration,
te_request_{tokenization,queue,inference}_duration, te_request_input_length, te_batch_next_size,
te_batch_next_tokens, te_queue_size; with TEI's buckets. Our own (golden watchdog, drift, reloads,
device) start with edge_.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

__all__ = ["FAILURE_LABELS", "Registry", "duration_buckets", "power_buckets"]

# te_request_failure's err labels (docs/serve.md, Errors): TEI's, plus disconnect.
FAILURE_LABELS = ("validation", "batch_size", "tokenization", "model_type", "inference",
                  "overloaded", "shutdown", "worker", "disconnect")


def duration_buckets() -> list[float]:
    """TEI's buckets for every *_duration histogram: 35 steps of x1.5 from 15 us (to ~20 min)."""
    value, out = 0.00001, []
    for _ in range(35):
        value *= 1.5
        out.append(float(f"{value:.6g}"))  # 1.5e-05, not 1.5000000000000002e-05
    return out


def power_buckets(count: int, limit: float | None = None) -> list[float]:
    """1, 2, 4, ... 2**(count-1), at most `limit`: TEI's batch size/tokens/input-length buckets."""
    return [float(2**i) for i in range(count) if limit is None or 2**i <= limit]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, registry: Registry, name: str, help: str, labelnames: Sequence[str]):
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = registry.lock
        self._series: dict[tuple[str, ...], object] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._series[key] = self._series.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return float(self._series.get(self._key(labels), 0.0))

    def render(self) -> list[str]:
        # A counter without labels is shown at 0 from the start, so rate() has a first point.
        series = self._series or ({(): 0.0} if not self.labelnames else {})
        return self.header() + [
            f"{self.name}{_labels(self.labelnames, k)} {_number(v)}"
            for k, v in sorted(series.items())
        ]


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._series[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._series[key] = self._series.get(key, 0.0) + amount

    def clear(self) -> None:
        with self._lock:
            self._series.clear()

    def discard(self, **labels: str) -> None:
        """Drop one series (if shown)."""
        key = self._key(labels)
        with self._lock:
            self._series.pop(key, None)

    def series(self) -> list[dict[str, str]]:
        """The label sets shown now."""
        with self._lock:
            return [dict(zip(self.labelnames, key)) for key in self._series]

    def value(self, **labels: str) -> float | None:
        with self._lock:
            return self._series.get(self._key(labels))

    def render(self) -> list[str]:
        return self.header() + [
            f"{self.name}{_labels(self.labelnames, k)} {_number(v)}"
            for k, v in sorted(self._series.items())
        ]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, registry, name, help, labelnames=(), buckets: Iterable[float] = ()):
        super().__init__(registry, name, help, labelnames)
        self.buckets = sorted(float(b) for b in buckets)

    def observe(self, value: float, **labels: str) -> None:
        """Count `value`; a NaN or infinite one is skipped: it would turn _sum into NaN or Inf
        for the rest of the process's life (no later value brings it back)."""
        key = self._key(labels)
        if not math.isfinite(value):
            return
        with self._lock:
            counts, total = self._series.get(key) or ([0] * (len(self.buckets) + 1), [0.0])
            index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
            counts[index] += 1
            total[0] += value
            self._series[key] = (counts, total)

    def count(self, **labels: str) -> int:
        with self._lock:
            entry = self._series.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def render(self) -> list[str]:
        lines = self.header()
        series = self._series or (
            {(): ([0] * (len(self.buckets) + 1), [0.0])} if not self.labelnames else {}
        )
        for key, (counts, total) in sorted(series.items()):
            running = 0
            for bound, count in zip(self.buckets + [math.inf], counts):
                running += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class Registry:
    """The metrics of one server. `on_collect` callbacks refresh gauges (RSS, temperature, drift)
    just before a scrape renders them, so nothing is polled between scrapes."""

    def __init__(self):
        self.lock = threading.RLock()
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:  # a registry raises on duplicates (STYLE.md)
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(self, name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(self, name, help, labelnames))

    def histogram(
        self, name: str, help: str, buckets: Iterable[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        return self._add(Histogram(self, name, help, labelnames, buckets))

    def on_collect(self, callback: Callable[[], None]) -> None:
        self._collectors.append(callback)

    def render(self) -> str:
        for callback in self._collectors:
            callback()
        with self.lock:
            lines = [line for metric in self._metrics.values() for line in metric.render()]
        return "\n".join(lines) + "\n"


class ServeMetrics:
    """Every metric edge-serve exports, on one Registry."""

    def __init__(self, max_input_length: int):
        r = self.registry = Registry()
        durations = duration_buckets()
        self.request_count = r.counter("te_request_count", "Requests received", ["method"])
        self.request_success = r.counter("te_request_success", "Requests answered 2xx", ["method"])
        self.request_failure = r.counter(
            "te_request_failure", "Requests answered with an error, by TEI error label", ["err"]
        )
        self.request_duration = r.histogram(
            "te_request_duration", "End-to-end request time (s)", durations
        )
        self.tokenization_duration = r.histogram(
            "te_request_tokenization_duration", "Tokenization time per request (s)", durations
        )
        self.queue_duration = r.histogram(
            "te_request_queue_duration", "Time queued before its batch ran (s)", durations
        )
        self.inference_duration = r.histogram(
            "te_request_inference_duration", "Time of the batch a request ran in (s)", durations
        )
        self.input_length = r.histogram(
            "te_request_input_length",
            "Tokens per input after truncation",
            power_buckets(20, max(1, max_input_length)),
        )
        self.batch_size = r.histogram("te_batch_next_size", "Inputs per batch", power_buckets(13))
        self.batch_tokens = r.histogram(
            "te_batch_next_tokens", "Tokens per batch (unpadded)", power_buckets(21)
        )
        self.backend_calls = r.counter(
            "edge_backend_calls_total", "Backend (model) calls the batches took"
        )
        self.padding_tokens = r.counter(
            "edge_padding_tokens_total", "Padding tokens computed and masked out in batched calls"
        )
        self.queue_size = r.gauge("te_queue_size", "Inputs queued or running (holding a permit)")
        self.embedding_norm = r.histogram(
            "edge_embedding_norm",
            "L2 norm of pooled embeddings before normalization",
            [2.0**i for i in range(-4, 9)],
        )
        self.drift = r.gauge(
            "edge_input_drift",
            "Kolmogorov-Smirnov distance of recent inputs from the reference "
            "distribution (0 = same, 1 = disjoint)",
            ["signal", "reference"],
        )
        self.golden_ok = r.gauge(
            "edge_golden_ok",
            "1 if the last golden re-run on the serving backend agreed with conversion, else 0",
        )
        self.golden_cosine = r.gauge(
            "edge_golden_cosine_min",
            "Lowest cosine of a golden output against conversion, last re-run",
        )
        self.golden_last = r.gauge(
            "edge_golden_last_run_timestamp_seconds", "Unix time of the last golden re-run"
        )
        self.golden_runs = r.counter(
            "edge_golden_runs_total", "Golden re-runs, by result", ["result"]
        )
        self.reloads = r.counter(
            "edge_reload_total", "Model reloads (SIGHUP, /admin/reload), by result", ["result"]
        )
        self.model_info = r.gauge(
            "edge_model_info",
            "The artifact being served (value 1)",
            ["artifact", "precision", "path", "generation"],
        )
        self.model_loaded = r.gauge(
            "edge_model_loaded_timestamp_seconds", "Unix time the serving model was loaded"
        )
        self.rss = r.gauge("process_resident_memory_bytes", "Resident set size of this process")
        self.temperature = r.gauge(
            "edge_cpu_temperature_celsius", "Thermal zone temperatures", ["zone"]
        )
        # Labelled counters show every label value they are known to take at 0 from the start:
        # a series first seen already at N reads as no increase to rate()/increase(), so
        # `rate(te_request_failure{err="overloaded"}[5m]) > 0` would miss the first burst.
        for method in ("single", "batch"):
            self.request_count.inc(0, method=method)
            self.request_success.inc(0, method=method)
        for err in FAILURE_LABELS:
            self.request_failure.inc(0, err=err)
        for result in ("pass", "fail"):
            self.golden_runs.inc(0, result=result)
        for result in ("success", "failure"):
            self.reloads.inc(0, result=result)
        r.on_collect(self._device)

    def _device(self) -> None:
        import psutil  # a dependency of edge_runtime itself

        try:
            self.rss.set(psutil.Process().memory_info().rss)
        except (OSError, psutil.Error):  # /proc unreadable: no RSS rather than no metrics
            self.rss.clear()
        from edge_runtime._sensors import sensors

        try:
            temperatures = sensors()["temperature_c"]
        except OSError:
            temperatures = {}
        self.temperature.clear()
        for zone, celsius in temperatures.items():
            self.temperature.set(celsius, zone=zone)

    def failed(self, err: str) -> None:
        self.request_failure.inc(err=err)
