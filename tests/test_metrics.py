"""Metrics: what the audit trail records, counted, for Prometheus.

A real mfad, a scripted mix of logins over the PAM socket, then the counters
as `mfa metrics` prints them and as Prometheus scrapes them from the loopback
endpoint: each count is the number of logins of that kind the test made, and
the same as the audit trail's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import Daemon, MakeUser, totp_now
from prometheus_client.parser import text_string_to_metric_families
from wire import PamWire


def _login(daemon: Daemon, user: str, answers: list[str], **items: str) -> str:
    with PamWire(daemon.pam_socket) as wire:
        return wire.login(user, answers, **items)[-1].payload


def _mfa(daemon: Daemon, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    if user is not None:
        return daemon.mfa_as(user, *args)
    mfa = Path(sys.executable).with_name("mfa")
    return subprocess.run(
        [str(mfa), "--socket", str(daemon.control_socket), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_a_scripted_mix_of_logins_is_counted_as_it_was_recorded(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """Three good logins over sshd, one with a recovery code, two that fail through sudo
    (three wrong codes each), one skipped (exempt), one through a service no one
    configured: `mfa metrics` counts each kind exactly, the same as the audit trail; the
    verification histogram has one observation per answer judged; the lock the wrong
    codes set is counted; no user name appears anywhere in the output."""
    mfad.restart(lockout={"delay": 0, "deny": 6, "source_deny": 100})
    alice, bob, carol = make_user(), make_user(), make_user()
    secret = mfad.enroll(alice)
    begun = mfad.request("enroll_begin", user=bob)
    spare = mfad.request("enroll_confirm", user=bob, code=totp_now(begun["secret"], -1))
    assert _login(mfad, alice, [totp_now(secret)], service="sshd") == "S"
    assert _login(mfad, bob, [spare["recovery_codes"][0]], service="sshd") == "S"
    assert _login(mfad, bob, [spare["recovery_codes"][1]], service="sshd") == "S"
    assert _login(mfad, alice, ["000000"] * 3, service="sudo") == "M"
    assert _login(mfad, alice, ["000000"] * 3, service="sudo") == "F"  # locked at the 6th
    assert mfad.request("exempt", user=carol, reason="service account")["changed"]
    assert _login(mfad, carol, [], service="sshd") == "K"
    assert _login(mfad, carol, [], service="weird-service-name") == "K"

    out = _mfa(mfad, "metrics")
    assert out.returncode == 0, out.stderr
    found = samples(out.stdout)
    assert value(found, "mfad_logins_total", outcome="success", method="totp", service="sshd") == 1
    assert (
        value(found, "mfad_logins_total", outcome="success", method="recovery", service="sshd") == 2
    )
    assert value(found, "mfad_logins_total", outcome="failure", method="none", service="sudo") == 2
    assert value(found, "mfad_logins_total", outcome="skipped", method="none", service="sshd") == 1
    assert value(found, "mfad_logins_total", outcome="skipped", method="none", service="other") == 1
    assert value(found, "mfad_wrong_answers_total", outcome="failure") == 6
    assert value(found, "mfad_account_locks_total", reason="deny") == 1
    # two enrolment confirmations, three good answers, six wrong ones
    assert value(found, "mfad_verification_seconds_count") == 2 + 3 + 6
    assert value(found, "mfad_errors_total", kind="store") == 0
    assert value(found, "mfad_start_time_seconds") > 0
    recorded = [r for r in mfad.audit() if r["event"] == "login"]
    assert len(recorded) == sum(v for (n, _), v in found.items() if n == "mfad_logins_total")
    for name in (alice, bob, carol):
        assert name not in out.stdout


def test_only_an_administrator_reads_the_metrics(mfad: Daemon, make_user: MakeUser) -> None:
    """`mfa metrics` as an ordinary user is refused (exit 4): the counts say how many
    logins fail and from which services."""
    user = make_user()
    refused = _mfa(mfad, "metrics", user=user)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "administrator" in refused.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_scrapes_the_loopback_endpoint_when_asked_to(
    mfad: Daemon, make_user: MakeUser
) -> None:
    """With metrics.listen on a loopback port, a scrape over HTTP returns the same counters
    as `mfa metrics`; an address that is not loopback is refused at start, naming the key."""
    port = _free_port()
    mfad.restart(metrics={"listen": f"127.0.0.1:{port}"})
    user = make_user()
    secret = mfad.enroll(user)
    assert _login(mfad, user, [totp_now(secret)], service="sshd") == "S"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        scraped = samples(page.read().decode())
    assert (
        value(scraped, "mfad_logins_total", outcome="success", method="totp", service="sshd") == 1
    )
    mfad.stop()
    with pytest.raises(RuntimeError, match=r"metrics\.listen.*must be a loopback address"):
        mfad.start(metrics={"listen": "0.0.0.0:9464"})
