"""What ``/metrics`` shows (issue #15): the proxy's tallies and live state, read at scrape time.

Sessions, logins and statements add to :class:`ProxyMetrics` as they go (dictionary counters
and :mod:`policyc.proxy.tally` histograms, on the event loop); :class:`ProxyCollector` turns
them, the listener's counters, the audit log's health and the key source's refreshes into
Prometheus families only when scraped.  The exposition is ``prometheus_client``'s.

Labels never carry PHI, statement text, parameters or tokens: decisions, statement kinds,
group names, reasons and outcomes come from fixed vocabularies or the policy; agent names (the
tokens' subjects) only with ``--metrics-agent-labels``, because every agent is a new series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from policyc import __version__
from policyc.proxy.tally import Histogram, Histograms

if TYPE_CHECKING:
    from policyc.proxy.server import ProxyServer


@dataclass
class ProxyMetrics:
    """The tallies one proxy process keeps for ``/metrics``."""

    agent_labels: bool = False  # --metrics-agent-labels: agent names as a label
    statements: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    sessions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    login_failures: Counter[str] = field(default_factory=Counter)
    proxy_seconds: Histogram = field(default_factory=Histogram)
    upstream_seconds: Histogram = field(default_factory=Histogram)
    holds_waiting: int = 0
    hold_seconds: Histograms = field(default_factory=Histograms)

    def statement(self, decision: str, kind: str | None, group: str, agent: str) -> None:
        """A statement was recorded with ``decision``."""
        self.statements[decision, kind or "unknown", group,
                        agent if self.agent_labels else ""] += 1

    def relabel(self, old: str, new: str, kind: str | None, group: str, agent: str) -> None:
        """A recorded statement's decision became ``new`` before it was spooled (a row limit
        lifted by an approval in force)."""
        key_agent = agent if self.agent_labels else ""
        self.statements[old, kind or "unknown", group, key_agent] -= 1
        self.statements[new, kind or "unknown", group, key_agent] += 1

    def ran(self, proxy_seconds: float, upstream_seconds: float) -> None:
        """A statement that went upstream was answered: the time from its record to its
        forwarding (judging done, the durable record awaited), and the database's time."""
        if proxy_seconds >= 0:
            self.proxy_seconds.observe(proxy_seconds)
        if upstream_seconds >= 0:
            self.upstream_seconds.observe(upstream_seconds)

    def session(self, group: str | None, outcome: str, agent: str | None) -> None:
        self.sessions[group or "", outcome,
                      (agent or "") if self.agent_labels else ""] += 1

    def login_failed(self, reason: str) -> None:
        self.login_failures[reason] += 1

    def hold_started(self) -> None:
        self.holds_waiting += 1

    def hold_ended(self, outcome: str, seconds: float) -> None:
        self.holds_waiting -= 1
        self.hold_seconds.observe(outcome, seconds)


class ProxyCollector:
    """A ``prometheus_client`` collector over one :class:`ProxyServer`."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def describe(self) -> Iterable[Metric]:
        return ()  # families are known only at collect time; nothing to check upfront

    def collect(self) -> Iterator[Metric]:
        server = self.server
        metrics = server.metrics
        agent = metrics.agent_labels
        info = GaugeMetricFamily("policyc_proxy_info", "This proxy: version, name, worker.",
                                 labels=["version", "proxy", "worker"])
        info.add_metric([__version__, server.config.proxy_name,
                         str(server.config.worker_index)], 1)
        yield info
        yield from self._connections(server)
        sessions = CounterMetricFamily(
            "policyc_sessions", "Agent sessions by group and outcome (opened, refused).",
            labels=["group", "outcome"] + (["agent"] if agent else []))
        for (group, outcome, who), count in sorted(metrics.sessions.items()):
            sessions.add_metric([group, outcome] + ([who] if agent else []), count)
        yield sessions
        failures = CounterMetricFamily("policyc_login_failures",
                                       "Refused logins by reason (never the token).",
                                       labels=["reason"])
        for reason, count in sorted(metrics.login_failures.items()):
            failures.add_metric([reason], count)
        yield failures
        statements = CounterMetricFamily(
            "policyc_statements", "Recorded statements by decision, kind and group.",
            labels=["decision", "kind", "group"] + (["agent"] if agent else []))
        for (decision, kind, group, who), count in sorted(metrics.statements.items()):
            if count:
                statements.add_metric([decision, kind, group] + ([who] if agent else []),
                                      count)
        yield statements
        yield _histogram("policyc_statement_proxy_seconds",
                         "Time from a statement's record to its forwarding upstream: "
                         "judging and the durable record (holds for approval excluded).",
                         metrics.proxy_seconds)
        yield _histogram("policyc_statement_upstream_seconds",
                         "Time from forwarding a statement to its last answer message.",
                         metrics.upstream_seconds)
        yield GaugeMetricFamily("policyc_holds_waiting",
                                "Statements held for a human's approval now.",
                                value=metrics.holds_waiting)
        holds = HistogramMetricFamily("policyc_hold_decision_seconds",
                                      "Time a held statement waited, by how it ended.",
                                      labels=["outcome"])
        for outcome, histogram in sorted(metrics.hold_seconds.by_label.items()):
            holds.add_metric([outcome], histogram.cumulative(), histogram.total)
        yield holds
        yield from self._audit(server)
        yield from self._keys(server)
        yield from self._reloads(server)

    @staticmethod
    def _connections(server: ProxyServer) -> Iterator[Metric]:
        counts = server.connection_counts()
        yield GaugeMetricFamily("policyc_connections_open",
                                "Client connections now, logged in or not.",
                                value=counts["open"])
        yield GaugeMetricFamily("policyc_logins_pending",
                                "Client connections not yet authenticated.",
                                value=counts["pending"])
        open_ = GaugeMetricFamily("policyc_sessions_open", "Agent sessions open now, by group.",
                                  labels=["group"])
        caps = CounterMetricFamily("policyc_connection_caps_hit",
                                   "Connections refused by a cap (53300), by reason.",
                                   labels=["reason"])
        for key, value in sorted(counts.items()):
            kind, _, name = key.partition(":")
            if kind == "group":
                open_.add_metric([name], value)
            elif kind == "refused":
                caps.add_metric([name], value)
        yield open_
        yield caps

    @staticmethod
    def _audit(server: ProxyServer) -> Iterator[Metric]:
        audit = server.audit
        if audit is None:
            return
        health = audit.health()
        gauges = (("policyc_spool_bytes", "Bytes in the audit spool on disk.",
                   health.spool_bytes),
                  ("policyc_spool_limit_bytes",
                   "The spool's limit: past it, statements are refused (58030).",
                   health.spool_limit),
                  ("policyc_audit_records_pending",
                   "Records durable in the spool, not yet in the database.", health.pending),
                  ("policyc_audit_oldest_pending_seconds",
                   "Age of the oldest record waiting for the drain (0: none).",
                   health.oldest_pending_seconds),
                  ("policyc_audit_outage", "1 while the drain cannot reach the database.",
                   int(health.outage)))
        for name, doc, gauge in gauges:
            yield GaugeMetricFamily(name, doc, value=gauge)
        yield _histogram("policyc_spool_flush_seconds",
                         "One group-committed spool write and fdatasync.", health.flushes)
        counters = (("policyc_audit_outages", "Times the drain lost the database.", "outages"),
                    ("policyc_audit_drained_records", "Records drained into the database.",
                     "drained"),
                    ("policyc_spool_write_errors", "Failed spool writes.", "io_errors"),
                    ("policyc_spool_full_refusals",
                     "Statements refused because the spool was full.", "full_refusals"))
        for name, doc, key in counters:
            yield CounterMetricFamily(name, doc, value=health.counts.get(key, 0))

    @staticmethod
    def _keys(server: ProxyServer) -> Iterator[Metric]:
        refreshes = CounterMetricFamily("policyc_jwks_refreshes",
                                        "Reads of the JWKS (file or URL), by outcome.",
                                        labels=["outcome"])
        verifier = server.verifier
        counts: Mapping[str, int] = getattr(getattr(verifier, "keys", None), "refreshes", {})
        for outcome in ("ok", "failed"):
            refreshes.add_metric([outcome], counts.get(outcome, 0))
        yield refreshes

    @staticmethod
    def _reloads(server: ProxyServer) -> Iterator[Metric]:
        reloads = CounterMetricFamily("policyc_reloads",
                                      "Reloads (SIGHUP or a changed file), by outcome.",
                                      labels=["outcome"])
        counts: Mapping[str, int] = getattr(server, "reload_counts", {})
        for outcome in ("ok", "failed"):
            reloads.add_metric([outcome], counts.get(outcome, 0))
        yield reloads
        policy_hash: str | None = getattr(server, "policy_hash", None)
        if policy_hash:
            policy = GaugeMetricFamily("policyc_policy_info",
                                       "The policy new sessions get (sha256 of its file).",
                                       labels=["hash"])
            policy.add_metric([policy_hash], 1)
            yield policy


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(),
                                 sum_value=histogram.total)

