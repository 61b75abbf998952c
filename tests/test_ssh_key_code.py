"""Key + code through the real sshd and OpenSSH client: `AuthenticationMethods
publickey,keyboard-interactive`, and the stack `mfa pam install sshd --mode key` writes
(the password include switched off, pam_mfa.so, then pam_permit.so).

The finding (issue 13): with pam_mfa.so alone in sshd's auth stack, a user who needs no
code (optional mode, not enrolled) is refused after a good key, since pam_mfa.so's skip
(PAM_IGNORE) leaves libpam no module that succeeded. With the installed stack that user
gets in on the key alone, and an enrolled user is asked for the code, not a password.
"""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Daemon, MakeUser, totp_now
from sshd import CODE_PROMPT, PrivateSshd, running_sshd

from mfa_cli import pamstack
from mfa_cli.main import cli

pytestmark = pytest.mark.ssh

PASSWORD = "correct horse battery staple 42"
COMMAND = "echo logged-in-as-$(id -un)"


@pytest.fixture
def key_sshd(tmp_path: Path) -> Iterator[PrivateSshd]:
    """A private sshd that wants a public key and then keyboard-interactive (PAM)."""

    def key_then_pam(text: str) -> str:
        text = text.replace("PubkeyAuthentication no\n", "PubkeyAuthentication yes\n")
        return text.replace(
            "AuthenticationMethods keyboard-interactive\n",
            "AuthenticationMethods publickey,keyboard-interactive\n",
        )

    with running_sshd(tmp_path / "sshd", key_then_pam) as server:
        yield server


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def authorize(user: str, key: Path) -> None:
    """Put `key`'s public half in the user's ~/.ssh/authorized_keys."""
    entry = pwd.getpwnam(user)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(key.with_suffix(".pub").read_text())
    for path in (ssh_dir, keys):
        subprocess.run(["chown", f"{entry.pw_uid}:{entry.pw_gid}", str(path)], check=True)


def with_key(key: Path) -> list[str]:
    return ["-i", str(key), "-o", "IdentitiesOnly=yes"]


def test_key_and_code_over_real_sshd(
    key_sshd: PrivateSshd, pam_module: Path, mfad: Daemon, make_user: MakeUser, client_key: Path
) -> None:
    """mode optional. pam_mfa.so alone: the unenrolled user is refused after a good key.
    The stack `mfa pam install sshd --mode key` writes: the same user is in on the key
    alone, asked nothing; an enrolled user is asked for the code (no password) and is in
    with it."""
    mfad.restart(mode="optional")
    optional_user, enrolled_user = make_user(PASSWORD), make_user(PASSWORD)
    for user in (optional_user, enrolled_user):
        authorize(user, client_key)
    secret = mfad.enroll(enrolled_user)

    key_sshd.set_pam([f"auth required {pam_module} socket={mfad.pam_socket}"])
    refused = key_sshd.login(
        optional_user, PASSWORD, [], COMMAND, ssh_options=with_key(client_key),
        methods="publickey,keyboard-interactive",
    )  # fmt: skip
    assert refused.exit_status == 255, refused.output
    assert f"logged-in-as-{optional_user}" not in refused.output
    assert f"Partial publickey for {optional_user}" in key_sshd.logs()  # the key was good

    key_sshd.set_pam(["auth required pam_unix.so"])
    installed = CliRunner().invoke(
        cli,
        ["pam", "install", "sshd", "--mode", "key", "--pam-dir", str(key_sshd.pam_dir),
         "--backup-dir", str(key_sshd.workdir / "backup"), "--module", str(pam_module),
         "--module-arg", f"socket={mfad.pam_socket}"],
    )  # fmt: skip
    assert installed.exit_code == 0, installed.output
    assert pamstack.analyse(key_sshd.pam_dir, "sshd").mode == "key"

    in_on_key = key_sshd.login(
        optional_user, PASSWORD, [], COMMAND, ssh_options=with_key(client_key),
        methods="publickey,keyboard-interactive",
    )  # fmt: skip
    assert in_on_key.exit_status == 0, in_on_key.output + key_sshd.logs()
    assert f"logged-in-as-{optional_user}" in in_on_key.output
    assert in_on_key.prompts == []

    with_code = key_sshd.login(
        enrolled_user, PASSWORD, [lambda _screen: totp_now(secret)], COMMAND,
        ssh_options=with_key(client_key), methods="publickey,keyboard-interactive",
    )  # fmt: skip
    assert with_code.exit_status == 0, with_code.output + key_sshd.logs()
    assert f"logged-in-as-{enrolled_user}" in with_code.output
    assert with_code.prompts == [CODE_PROMPT]
