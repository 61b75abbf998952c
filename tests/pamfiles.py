"""Debian 12's PAM service files, as shipped (comments dropped), for tests that install
pam_mfa.so or judge stacks in a directory of their own instead of /etc/pam.d.

`mfa pam install` and `mfa doctor` read such a directory whole. pam_wrapper
(tests/pamtest.py) redirects only the service file libpam opens first: an `@include
common-auth` in it is read from the machine's own /etc/pam.d (read, never written),
which on Debian 12 holds the same common-auth as here. A test that needs an included
file of its own names it by absolute path.
"""

from __future__ import annotations

from pathlib import Path

DEBIAN: dict[str, str] = {
    "common-auth": (
        "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n"
        "auth\trequisite\t\t\tpam_deny.so\n"
        "auth\trequired\t\t\tpam_permit.so\n"
    ),
    "common-account": (
        "account\t[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so\n"
        "account\trequisite\t\t\tpam_deny.so\n"
        "account\trequired\t\t\tpam_permit.so\n"
    ),
    "common-session": (
        "session\t[default=1]\t\t\tpam_permit.so\n"
        "session\trequisite\t\t\tpam_deny.so\n"
        "session\trequired\t\t\tpam_permit.so\n"
        "session\trequired\tpam_unix.so\n"
    ),
    "common-password": (
        "password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\n"
        "password\trequisite\t\t\tpam_deny.so\n"
        "password\trequired\t\t\tpam_permit.so\n"
    ),
    "sshd": (
        "# PAM configuration for the Secure Shell service\n"
        "\n"
        "# Standard Un*x authentication.\n"
        "@include common-auth\n"
        "\n"
        "account    required     pam_nologin.so\n"
        "@include common-account\n"
        "session    required     pam_loginuid.so\n"
        "@include common-session\n"
        "session    required     pam_limits.so\n"
        "@include common-password\n"
    ),
    "login": (
        "auth       optional   pam_faildelay.so  delay=3000000\n"
        "auth       requisite  pam_nologin.so\n"
        "session    required   pam_env.so readenv=1\n"
        "@include common-auth\n"
        "auth       optional   pam_group.so\n"
        "session    required   pam_limits.so\n"
        "@include common-account\n"
        "@include common-session\n"
        "@include common-password\n"
    ),
    "su": (
        "auth       sufficient pam_rootok.so\n"
        "session       required   pam_env.so readenv=1\n"
        "session    required   pam_limits.so\n"
        "@include common-auth\n"
        "@include common-account\n"
        "@include common-session\n"
    ),
    "su-l": (
        "auth\t\tinclude\t\tsu\n"
        "account\t\tinclude\t\tsu\n"
        "password\tinclude\t\tsu\n"
        "session\t\toptional\tpam_keyinit.so force revoke\n"
        "session\t\tinclude\t\tsu\n"
    ),
    "sudo": (
        "session    required   pam_limits.so\n"
        "\n"
        "@include common-auth\n"
        "@include common-account\n"
        "@include common-session-noninteractive\n"
    ),
    "common-session-noninteractive": (
        "session\t[default=1]\t\t\tpam_permit.so\n"
        "session\trequisite\t\t\tpam_deny.so\n"
        "session\trequired\t\t\tpam_permit.so\n"
        "session\trequired\tpam_unix.so\n"
    ),
    "other": (
        "auth required pam_deny.so\n"
        "account required pam_deny.so\n"
        "password required pam_deny.so\n"
        "session required pam_deny.so\n"
    ),
}


def debian_pam_dir(path: Path) -> Path:
    """Write Debian 12's service files into `path` (made if missing); returns it."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in DEBIAN.items():
        (path / name).write_text(text)
    return path
