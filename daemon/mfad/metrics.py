"""Counts for Prometheus: what the audit trail records, as numbers.

The audit record is the fact; a metric counts records. AuditLog hands every
record it has written to ``Metrics.observe``, so a login is counted exactly
when, and as what, it was recorded: ``mfad_logins_total`` by outcome, method
and service agrees with ``mfa audit --event login``, and a login that could
not be recorded is not counted (it is an ``mfad_errors_total{kind="audit"}``).
Two things the trail does not hold are measured where they happen: the time
the verifier takes per answer (lock, check, counters; the back-off a wrong
code then serves is not in it), and store and audit errors.

Labels take only values from a fixed set, so no peer can grow the number of
series: an outcome, method or reason is one of ours; a PAM service outside
``KNOWN_SERVICES`` and the config's ``services`` map counts as ``other``. No
user name or address is ever a label.

Read them with ``mfa metrics`` (the control op ``metrics``: root and the admin
group) or, if ``metrics.listen`` names a loopback address, over HTTP there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from mfa_wire.events import Event
from mfad.config import split_listen
from mfad.errors import AuditError, MfaError, StoreError

log = structlog.get_logger("mfad.metrics")

KNOWN_SERVICES = frozenset(
    {"sshd", "login", "sudo", "sudo-i", "su", "su-l", "runuser", "gdm-password", "lightdm"}
)
"""PAM services counted under their own name (besides those in the config's map)."""

_METHODS = frozenset({"totp", "recovery", "enrolment", "hotp", "email", "email_recovery", "none"})
_LOCK_REASONS = frozenset({"deny", "lifetime_cap"})


class Metrics:
    """The daemon's counters, on a registry of its own (no process-wide default state)."""

    def __init__(self, services: Callable[[], frozenset[str]] = frozenset) -> None:
        self._services = services  # the config's service names, read per record (reload)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.logins = Counter(
            "mfad_logins",
            "Second-factor logins that ended, by outcome (success, failure, skipped, error), "
            "method (totp, hotp, email, recovery, email_recovery, enrolment; none) and PAM "
            "service",
            ["outcome", "method", "service"],
            registry=r,
        )
        self.answers = Counter(
            "mfad_wrong_answers",
            "Answers not accepted (wrong, replayed or malformed codes; refused unseen while "
            "locked or blocked), by outcome (failure: judged; refused: not looked at)",
            ["outcome"],
            registry=r,
        )
        self.verify_seconds = Histogram(
            "mfad_verification_seconds",
            "Time to judge one answer: guard lock, code check and counters (without the "
            "back-off a wrong code then waits)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.locks = Counter(
            "mfad_account_locks", "Account locks set, by reason (deny, lifetime_cap)", ["reason"],
            registry=r,
        )  # fmt: skip
        self.blocks = Counter(
            "mfad_source_blocks", "Per-host blocks set (a user from one remote host)", registry=r
        )
        self.errors = Counter(
            "mfad_errors",
            "Requests that failed on the store or the audit log, by kind (store, audit)",
            ["kind"],
            registry=r,
        )
        self.started = Gauge(
            "mfad_start_time_seconds", "When this mfad started, as a Unix time", registry=r
        )
        self.started.set(time.time())
        for kind in ("store", "audit"):  # present at zero, so a rate() has a start
            self.errors.labels(kind)

    def observe(self, event: str, fields: Mapping[str, Any]) -> None:
        """One record the audit log wrote."""
        if event == Event.LOGIN:
            method = str(fields.get("method") or "none")
            self.logins.labels(
                str(fields.get("outcome")),
                method if method in _METHODS else "other",
                self._service(fields.get("service")),
            ).inc()
        elif event == Event.ATTEMPT:
            self.answers.labels(str(fields.get("outcome"))).inc()
        elif event == Event.LOCK_SET:
            reason = str(fields.get("reason"))
            self.locks.labels(reason if reason in _LOCK_REASONS else "other").inc()
        elif event == Event.SOURCE_BLOCKED:
            self.blocks.inc()

    def failed(self, exc: MfaError) -> None:
        """A request that failed with `exc` (where errors become answers: session, control).
        Store errors are counted here; audit errors where they happen (audit_failed)."""
        if isinstance(exc, StoreError):
            self.errors.labels("store").inc()

    def audit_failed(self, _exc: AuditError) -> None:
        """A record the audit log could not write."""
        self.errors.labels("audit").inc()

    def _service(self, service: object) -> str:
        name = str(service or "")
        return name if name in KNOWN_SERVICES or name in self._services() else "other"

    def render(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry).decode()

    def serve(self, listen: str) -> None:
        """Answer scrapes at `listen` (a loopback HOST:PORT) from a thread of its own, which
        only reads these counters: a scrape never waits for, nor holds up, the event loop."""
        host, port = split_listen(listen)
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics_listening", listen=listen)
