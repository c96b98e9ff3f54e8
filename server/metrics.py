"""Prometheus metrics: what each process counts, added up across the processes that share a store.

Every process (``jobcast serve``, each child of ``--workers N``, each ``jobcast worker``)
counts in plain numbers (:class:`Counts`). On a shared store it publishes them every
few seconds and a scrape of any process adds up every live process's numbers, so one
scrape shows the cluster whichever process answers it; a process that is gone for longer
than :data:`PROCESS_TTL` drops out (Prometheus reads that as a counter reset). Queue
depth and running jobs come from the store itself at scrape time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import anyio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

#: the media type of a scrape's answer
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: how often a process on a shared store publishes its numbers, and how long they count after its last publish
PUBLISH_INTERVAL = 5.0
PROCESS_TTL = 30.0
#: job durations, in seconds: agent refreshes take from seconds to many minutes
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, math.inf)

Labels = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Family:
    kind: str  # counter, gauge or histogram
    help: str
    labels: Labels = ()


FAMILIES: dict[str, Family] = {
    "jobcast_jobs_started": Family("counter", "Job attempts started", ("agent",)),
    "jobcast_jobs_finished": Family("counter", "Jobs that reached a final status", ("agent", "status")),
    "jobcast_job_retries": Family("counter", "Attempts that failed and will be retried", ("agent",)),
    "jobcast_job_duration_seconds": Family("histogram", "How long finished attempts ran", ("agent",)),
    "jobcast_subscribers": Family("gauge", "Open push connections", ("transport",)),
    "jobcast_messages_sent": Family("counter", "Messages handed to subscribers", ("type",)),
    "jobcast_progress_coalesced": Family("counter", "Progress a lagging subscriber skipped for a newer value"),
    "jobcast_slow_consumer_closes": Family("counter", "Subscribers closed for falling behind (1013)", ("transport",)),
    "jobcast_refused": Family("counter", "Refused requests and handshakes", ("transport", "reason")),
    "jobcast_store_errors": Family("counter", "Store calls that failed"),
    "jobcast_store_outage_seconds": Family("counter", "Seconds the store has been unavailable"),
}
#: computed from the store at scrape time, cluster-wide; never added up across processes
STORE_GAUGES = {
    "jobcast_queue_depth": "Jobs waiting: queued or retrying",
    "jobcast_jobs_running": "Jobs running",
}


class Counts:
    """One process's numbers: family -> labels -> value (histograms: buckets, ``_sum`` and ``_count``)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[Labels, float]] = {name: {} for name in FAMILIES}

    def add(self, family: str, labels: Labels = (), amount: float = 1.0) -> None:
        series = self.values[family]
        series[labels] = series.get(labels, 0.0) + amount

    def set(self, family: str, labels: Labels, value: float) -> None:
        self.values[family][labels] = value

    def observe(self, family: str, labels: Labels, seconds: float) -> None:
        for bound in DURATION_BUCKETS:
            if seconds <= bound:
                self.add(family, (*labels, _le(bound)))
        self.add(family, (*labels, "_sum"), seconds)
        self.add(family, (*labels, "_count"))

    def to_json(self) -> str:
        return json.dumps({name: [[list(labels), value] for labels, value in series.items()]
                           for name, series in self.values.items()})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Counts:
        counts = cls()
        for name, series in json.loads(text).items():
            if name in FAMILIES:
                for labels, value in series:
                    counts.add(name, tuple(labels), float(value))
        return counts

    @classmethod
    def total(cls, many: Iterable[Counts]) -> Counts:
        summed = cls()
        for counts in many:
            for name, series in counts.values.items():
                for labels, value in series.items():
                    summed.add(name, labels, value)
        return summed


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class Metrics:
    """This process's counts, with the name it publishes them under."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.process = uuid.uuid4().hex[:12]

    def job_started(self, agent: str) -> None:
        self.counts.add("jobcast_jobs_started", (agent,))

    def job_retrying(self, agent: str) -> None:
        self.counts.add("jobcast_job_retries", (agent,))

    def job_finished(self, agent: str, status: str, seconds: float | None) -> None:
        self.counts.add("jobcast_jobs_finished", (agent, status))
        if seconds is not None:
            self.counts.observe("jobcast_job_duration_seconds", (agent,), seconds)

    def refused(self, transport: str, reason: str) -> None:
        self.counts.add("jobcast_refused", (transport, reason))


def render(counts: Counts, store_gauges: dict[str, float]) -> bytes:
    """The Prometheus text of ``counts`` (added up already) and the store's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(counts, store_gauges))
    return generate_latest(registry)


class _Collector:
    def __init__(self, counts: Counts, store_gauges: dict[str, float]) -> None:
        self._counts = counts
        self._store_gauges = store_gauges

    def collect(self) -> Iterator[Metric]:
        for name, family in FAMILIES.items():
            yield _family(name, family, self._counts.values[name])
        for name, value in self._store_gauges.items():
            gauge = GaugeMetricFamily(name, STORE_GAUGES[name])
            gauge.add_metric([], value)
            yield gauge


def _family(name: str, family: Family, series: dict[Labels, float]) -> Metric:
    if family.kind == "histogram":
        return _histogram(name, family, series)
    made: Any = (CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily)(
        name, family.help, labels=list(family.labels)
    )
    for labels, value in sorted(series.items()):
        made.add_metric(list(labels), value)
    return made  # type: ignore[no-any-return]


def _histogram(name: str, family: Family, series: dict[Labels, float]) -> Metric:
    made = HistogramMetricFamily(name, family.help, labels=list(family.labels))
    for labels in sorted({key[:-1] for key in series}):
        buckets = [(_le(bound), series.get((*labels, _le(bound)), 0.0)) for bound in DURATION_BUCKETS]
        made.add_metric(list(labels), buckets, sum_value=series.get((*labels, "_sum"), 0.0))
    return made


class SharedStore(Protocol):
    """What publishing needs of a store (:class:`~server.store.Store`)."""

    shared: bool

    async def share_counts(self, process: str, counts: str, max_age: float) -> list[str]: ...


def record_gauges(metrics: Metrics, *, subscribers: dict[str, int], store_errors: int, outage_seconds: float) -> None:
    """This process's current subscribers and store outage, just before its numbers are read or published."""
    for transport, count in subscribers.items():
        metrics.counts.set("jobcast_subscribers", (transport,), count)
    metrics.counts.set("jobcast_store_errors", (), store_errors)
    metrics.counts.set("jobcast_store_outage_seconds", (), outage_seconds)


async def keep_publishing(metrics: Metrics, store: SharedStore, before: Callable[[], None]) -> None:
    """On a shared store, publish this process's numbers every :data:`PUBLISH_INTERVAL` (``before`` refreshes
    its gauges first), so a scrape of any process counts this one, a ``jobcast worker`` included."""
    if not store.shared:
        return
    while True:
        before()
        with contextlib.suppress(Exception):  # the store is down (counted as such) or slow: next round
            with anyio.fail_after(PUBLISH_INTERVAL):
                await store.share_counts(metrics.process, metrics.counts.to_json(), PROCESS_TTL)
        await anyio.sleep(PUBLISH_INTERVAL)
