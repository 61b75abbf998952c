"""What every connection handler shares: config, store, secret box, audit log, clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mfad.audit import AuditLog
from mfad.config import Config
from mfad.lockout import Guard
from mfad.mailer import Mailer
from mfad.metrics import Metrics
from mfad.secretbox import SecretBox
from mfad.store import Store


@dataclass(slots=True)
class Context:
    config: Config  # replaced as a whole on reload, never mutated
    store: Store
    box: SecretBox
    audit: AuditLog
    guard: Guard
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = field(default=time.time)  # injected so tests control time
    mailer: Mailer | None = None  # codes by email (emailcodes); notices have their own use
