"""sshd's effective settings, as `sshd -T` prints them, and what they let in.

`effective` asks the sshd binary itself (`sshd -T -f CONFIG -C user=...`), so that
Include files, defaults and `Match` blocks count exactly as sshd will apply them;
`method_lists` turns the settings into the method lists that can complete a login
(AuthenticationMethods, each method enabled or not); `without_code` says how a login can
get past them without pam_mfa.so asking (a key alone, or, with the key + code stack, the
code alone or any password); `deployment` names the documented one in force.

A login asks PAM's auth stack only through keyboard-interactive or, with UsePAM, the
password method (which answers every hidden prompt with the password).
"""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

PROBE_USER = "mfa-doctor-nobody"
"""The user sshd -T is asked about for its settings outside every `Match User` block."""
MAX_USERS = 2000
"""Local users whose settings are evaluated one by one (about 13 ms each)."""
NO_LOGIN_SHELLS = frozenset(
    {"", "/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"}
)


class SshdError(Exception):
    """sshd -T could not run or refused the config; the message says which."""


def effective(sshd: Path, config: Path, user: str) -> dict[str, str]:
    """sshd's settings for a connection by `user` (keys lower-case, first value each)."""
    spec = f"user={user},host=doctor.invalid,addr=192.0.2.1,laddr=192.0.2.2,lport=22"
    try:
        done = subprocess.run(
            [str(sshd), "-T", "-f", str(config), "-C", spec],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SshdError(f"cannot run {sshd} -T: {exc}") from None
    if done.returncode != 0:
        raise SshdError(f"{sshd} -T -f {config}: {done.stderr.strip()}")
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


def local_users() -> list[str]:
    users = [p.pw_name for p in pwd.getpwall() if p.pw_shell not in NO_LOGIN_SHELLS]
    return sorted(set(users))[:MAX_USERS]


_ENABLED_BY = {
    "publickey": "pubkeyauthentication",
    "password": "passwordauthentication",
    "keyboard-interactive": "kbdinteractiveauthentication",
    "hostbased": "hostbasedauthentication",
    "gssapi-with-mic": "gssapiauthentication",
}


METHOD_SETTINGS = ("usepam", "authenticationmethods", *_ENABLED_BY.values())
"""The settings of sshd -T that decide how a login can complete (a Match block may change
any of them)."""


def _method_lists(settings: dict[str, str]) -> list[tuple[str, ...]]:
    """The method lists that can complete a login, each as the methods it needs."""
    enabled = {m for m, key in _ENABLED_BY.items() if settings.get(key) == "yes"}
    value = settings.get("authenticationmethods", "any")
    if value == "any":
        return [(m,) for m in _ENABLED_BY if m in enabled]
    lists = [tuple(m.split(":")[0] for m in item.split(",")) for item in value.split()]
    return [methods for methods in lists if set(methods) <= enabled]


def methods_used(settings: dict[str, str]) -> set[str]:
    return {m for methods in _method_lists(settings) for m in methods}


def _runs_pam(methods: tuple[str, ...], settings: dict[str, str]) -> bool:
    if settings.get("usepam") != "yes":
        return False
    return "keyboard-interactive" in methods or "password" in methods


def without_code(settings: dict[str, str], stack: str | None) -> str:
    """How a login can pass these settings without a code ("" if none can)."""
    ways = []
    for methods in _method_lists(settings):
        shown = "+".join(methods)
        if not _runs_pam(methods, settings):
            ways.append(f"`{shown}` alone")
        elif stack == "key" and "publickey" not in methods:
            what = "any password" if "keyboard-interactive" not in methods else "the code alone"
            ways.append(f"`{shown}` with {what} (the key stack checks no password)")
    return "; ".join(dict.fromkeys(ways))


def deployment(settings: dict[str, str], stack: str | None) -> str:
    lists = _method_lists(settings)
    if not lists:
        return "no method can complete a login"
    shown = " ".join(",".join(m) for m in lists)
    if settings.get("usepam") == "yes" and all("keyboard-interactive" in m for m in lists):
        if stack == "key" and all("publickey" in m for m in lists):
            return f"in force: public key + code (AuthenticationMethods {shown})"
        if stack == "password" and all("publickey" in m for m in lists):
            return f"in force: public key + password + code (AuthenticationMethods {shown})"
        if stack == "password":
            return f"in force: password + code (AuthenticationMethods {shown})"
    return f"methods that complete a login: {shown}"
