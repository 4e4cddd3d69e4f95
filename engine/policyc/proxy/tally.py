"""Counting on the hot path without a lock or a label lookup per observation.

The proxy's metrics are read when ``/metrics`` is scraped (:mod:`policyc.proxy.metrics`); what
the statements' path does is only to add to these tallies, on the event loop that owns them.
A :class:`Histogram` observation is one ``bisect`` and two additions, where a
``prometheus_client`` histogram takes a lock and walks its buckets.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import Final

#: Seconds, for latencies from tens of microseconds (a cached judgement, one fdatasync) to
#: minutes (a long query, a human deciding a hold).
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                          0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    """Observations counted into fixed buckets (upper bounds, inclusive, as Prometheus)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as the Prometheus exposition wants them, ``+Inf`` last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(float(bound)), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class Histograms:
    """One :class:`Histogram` per label value, made on first use."""

    __slots__ = ("bounds", "by_label")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.by_label: dict[str, Histogram] = {}

    def observe(self, label: str, value: float) -> None:
        histogram = self.by_label.get(label)
        if histogram is None:
            histogram = self.by_label[label] = Histogram(self.bounds)
        histogram.observe(value)


__all__ = ["LATENCY_BUCKETS", "Counter", "Histogram", "Histograms"]
