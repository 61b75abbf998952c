"""`mfa pam install` / `mfa pam remove` on Debian's PAM files in a temporary directory,
and the stacks they write run through the real libpam (pam_wrapper) against a real mfad.

Two findings of issue 13 are shown here through libpam itself:

- `auth required pam_unix.so` then `auth required pam_mfa.so` carries on after a wrong
  password, so someone without it is shown a pending user's new secret. `pam install`
  refuses to write into such a file; the stack it writes on Debian never reaches
  pam_mfa.so after a wrong password.
- With a public key + code and pam_mfa.so alone in the stack, a user who needs no code
  (PAM_IGNORE) is refused: no module succeeded. `pam install --mode key` writes
  pam_permit.so after it, and that user gets in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import Daemon, MakeUser, totp_now
from pamfiles import DEBIAN, debian_pam_dir
from pamtest import authenticate

from mfa_cli import pamstack
from mfa_cli.main import cli

PASSWORD = "correct horse battery staple 42"
ENROL_INTRO = "Multi-factor authentication is now required for this account."


@pytest.fixture
def pam_dir(tmp_path: Path) -> Path:
    return debian_pam_dir(tmp_path / "pam.d")


def pam(*args: str) -> Result:
    return CliRunner().invoke(cli, ["pam", *args])


def install(pam_dir: Path, service: str, *extra: str) -> Result:
    return pam(
        "install",
        service,
        "--pam-dir",
        str(pam_dir),
        "--backup-dir",
        str(pam_dir.parent / "backup"),
        *extra,
    )


def remove(pam_dir: Path, service: str) -> Result:
    return pam(
        "remove", service, "--pam-dir", str(pam_dir), "--backup-dir", str(pam_dir.parent / "backup")
    )


def module_args(mfad: Daemon, pam_module: Path) -> list[str]:
    return ["--module", str(pam_module), "--module-arg", f"socket={mfad.pam_socket}"]


@pytest.mark.parametrize("service", ["sshd", "login", "sudo", "su"])
def test_install_puts_the_module_after_the_password_and_remove_restores_every_byte(
    pam_dir: Path, service: str
) -> None:
    """On each Debian service, install adds one line right after `@include common-auth`
    that the stack judge accepts; a second install changes nothing; remove gives back the
    file byte for byte and drops the backup."""
    before = (pam_dir / service).read_bytes()

    first = install(pam_dir, service)
    assert first.exit_code == 0, first.output
    after = (pam_dir / service).read_text()
    lines = after.splitlines()
    assert lines[lines.index("@include common-auth") + 2] == "auth       required     pam_mfa.so"
    report = pamstack.analyse(pam_dir, service)
    assert report.ok and report.mode == "password", report.findings
    again = install(pam_dir, service)
    assert again.exit_code == 0 and "already installed" in again.output
    assert (pam_dir / service).read_text() == after

    gone = remove(pam_dir, service)
    assert gone.exit_code == 0, gone.output
    assert (pam_dir / service).read_bytes() == before
    assert not list((pam_dir.parent / "backup").iterdir())


def test_su_l_is_covered_by_installing_into_su(pam_dir: Path) -> None:
    """`su -` runs su-l, which includes su: installing into su puts pam_mfa.so in both."""
    assert install(pam_dir, "su").exit_code == 0
    report = pamstack.analyse(pam_dir, "su-l")
    assert report.ok and [line.file.name for line in report.mfa] == ["su"]


def test_install_refuses_a_stack_that_carries_on_after_a_wrong_password(pam_dir: Path) -> None:
    """A password line that is merely `required` lets the stack go on after a wrong
    password: install leaves the file as it was and says which line and what to do."""
    text = "auth required pam_unix.so\naccount required pam_unix.so\n"
    (pam_dir / "custom").write_text(text)

    result = install(pam_dir, "custom")

    assert result.exit_code == 1
    assert "left as it was" in result.output
    assert "runs after a failed password" in result.output
    assert "`auth required pam_unix.so`" in result.output
    assert "requisite" in result.output  # the fix
    assert (pam_dir / "custom").read_text() == text


def test_remove_keeps_edits_made_after_install(pam_dir: Path) -> None:
    """An administrator's own change after install survives remove; only the marked
    pam_mfa.so line goes, and the pristine copy stays in the backup directory."""
    assert install(pam_dir, "sshd").exit_code == 0
    path = pam_dir / "sshd"
    path.write_text(path.read_text() + "session optional pam_echo.so hello\n")

    result = remove(pam_dir, "sshd")

    assert result.exit_code == 0 and "edits are kept" in result.output
    assert "pam_mfa.so" not in path.read_text()
    assert path.read_text().endswith("session optional pam_echo.so hello\n")
    assert (pam_dir.parent / "backup" / "sshd").read_text() == DEBIAN["sshd"]


def test_key_mode_switches_the_password_off_and_remove_restores_it(pam_dir: Path) -> None:
    """--mode key: the code after sshd's key check, the password include switched off,
    pam_permit.so after pam_mfa.so; switching back to password mode and removing both
    give the original file."""
    before = (pam_dir / "sshd").read_bytes()

    assert install(pam_dir, "sshd", "--mode", "key").exit_code == 0
    text = (pam_dir / "sshd").read_text()
    assert "#mfa pam install: off# @include common-auth" in text
    assert "auth       requisite    pam_mfa.so\n" in text
    assert "auth       required     pam_permit.so\n" in text
    report = pamstack.analyse(pam_dir, "sshd")
    assert report.ok and report.mode == "key"

    assert install(pam_dir, "sshd").exit_code == 0  # back to password + code
    assert pamstack.analyse(pam_dir, "sshd").mode == "password"
    assert remove(pam_dir, "sshd").exit_code == 0
    assert (pam_dir / "sshd").read_bytes() == before


def test_key_mode_is_refused_for_a_service_without_a_key_check(pam_dir: Path) -> None:
    """sudo checks no key: a key-mode stack there would ask for a code alone."""
    result = install(pam_dir, "sudo", "--mode", "key")
    assert result.exit_code == 1 and "checks no public key" in result.output
    assert "pam_mfa" not in (pam_dir / "sudo").read_text()


# --- the stacks through the real libpam ---


def test_key_stack_lets_in_a_user_who_needs_no_code(
    pam_dir: Path, pam_module: Path, mfad: Daemon, make_user: MakeUser
) -> None:
    """Key + code, mode optional: with pam_mfa.so alone in the stack an unenrolled user is
    refused (PAM_PERM_DENIED: the skip leaves no module that succeeded, the finding);
    with the stack `pam install --mode key` writes, the same user gets in, asked nothing."""
    mfad.restart(mode="optional")
    user = make_user(PASSWORD)
    (pam_dir / "sshd").write_text(f"auth required {pam_module} socket={mfad.pam_socket}\n")
    broken = authenticate(pam_dir, "sshd", user, [])
    assert broken.name == "PAM_PERM_DENIED"
    assert pamstack.Problem.SKIP_REFUSED in {
        f.problem for f in pamstack.analyse(pam_dir, "sshd").findings
    }

    debian_pam_dir(pam_dir)
    assert install(pam_dir, "sshd", "--mode", "key", *module_args(mfad, pam_module)).exit_code == 0
    result = authenticate(pam_dir, "sshd", user, [])

    assert result.name == "PAM_SUCCESS", result
    assert result.texts() == []


def test_key_stack_asks_an_enrolled_user_for_the_code_and_only_the_code(
    pam_dir: Path, pam_module: Path, mfad: Daemon, make_user: MakeUser
) -> None:
    """Through the key stack an enrolled user is asked for the code, not the password: a
    right code lets them in, a wrong one three times does not."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    assert install(pam_dir, "sshd", "--mode", "key", *module_args(mfad, pam_module)).exit_code == 0

    good = authenticate(pam_dir, "sshd", user, [totp_now(secret)])
    assert good.name == "PAM_SUCCESS", good
    assert good.texts("prompt_off") == ["Verification code: "]
    bad = authenticate(pam_dir, "sshd", user, ["000000", "000001", "000002"])
    assert bad.name == "PAM_MAXTRIES"


def test_wrong_password_never_reaches_the_module_in_the_installed_stack(
    pam_dir: Path, pam_module: Path, mfad: Daemon, make_user: MakeUser
) -> None:
    """A pending user's new secret is shown only after the right password. With `auth
    required pam_unix.so` before pam_mfa.so (the finding) a wrong password still brings
    the enrolment QR code; with the stack `pam install` writes on Debian, a wrong password
    ends the login at once and mfad is never asked."""
    user = make_user(PASSWORD)
    mfad.request("require", user=user)
    line = f"auth required {pam_module} socket={mfad.pam_socket}"
    (pam_dir / "bad").write_text(f"auth required pam_unix.so\n{line}\n")
    shown = authenticate(pam_dir, "bad", user, ["wrong password", "000000"])
    assert any(ENROL_INTRO in text for text in shown.texts()), shown
    assert shown.name != "PAM_SUCCESS"

    assert install(pam_dir, "sshd", *module_args(mfad, pam_module)).exit_code == 0
    before = len(mfad.audit())
    refused = authenticate(pam_dir, "sshd", user, ["wrong password", "000000"])

    assert refused.name == "PAM_AUTH_ERR"
    assert not any(ENROL_INTRO in text for text in refused.texts())
    assert refused.texts("prompt_off") == ["Password: "]
    assert [r for r in mfad.audit()[before:] if r.get("user") == user] == []


@pytest.mark.parametrize(
    ("stack", "password", "codes", "problem"),
    [
        # a right password ends the stack: no code is asked
        ("auth sufficient pam_unix.so\n{mfa}\nauth required pam_deny.so\n", PASSWORD, [], "bypass"),
        # a wrong code is ignored
        ("@include common-auth\nauth optional {module}\n", PASSWORD, ["000000"] * 3, "bypass"),
        # the jump skips pam_mfa.so
        (
            "auth [success=2 default=ignore] pam_unix.so\nauth requisite pam_deny.so\n{mfa}\n"
            "auth required pam_permit.so\n",
            PASSWORD,
            [],
            "bypass",
        ),
    ],
    ids=["after-sufficient-unix", "optional", "jumped-over"],
)
def test_what_the_judge_calls_a_bypass_is_one_through_libpam(
    pam_dir: Path,
    pam_module: Path,
    mfad: Daemon,
    make_user: MakeUser,
    stack: str,
    password: str,
    codes: list[str],
    problem: str,
) -> None:
    """Each stack pamstack (and so `mfa doctor`) calls bypassable does let an enrolled user
    in through the real libpam without a right code."""
    user = make_user(PASSWORD)
    mfad.enroll(user)
    module = f"{pam_module} socket={mfad.pam_socket}"
    (pam_dir / "svc").write_text(stack.format(mfa=f"auth required {module}", module=module))

    result = authenticate(pam_dir, "svc", user, [password, *codes])

    assert result.name == "PAM_SUCCESS", result
    assert problem in {f.problem.value for f in pamstack.analyse(pam_dir, "svc").findings}


@pytest.mark.parametrize(("how", "asked"), [("include", False), ("substack", True)])
def test_include_and_substack_are_judged_as_libpam_runs_them(
    pam_dir: Path, pam_module: Path, mfad: Daemon, make_user: MakeUser, how: str, asked: bool
) -> None:
    """A file with `auth sufficient pam_unix.so`, pulled in with `include`, ends the whole
    stack on a right password (no code: the judge says bypass); pulled in with `substack`,
    it ends only the substack and the code is asked (the judge finds no bypass)."""
    user = make_user(PASSWORD)
    secret = mfad.enroll(user)
    (pam_dir / "password-auth").write_text(
        "auth sufficient pam_unix.so\nauth requisite pam_deny.so\n"
    )
    module = f"{pam_module} socket={mfad.pam_socket}"
    # by absolute path: pam_wrapper redirects the service file, not what it includes
    included = pam_dir / "password-auth"
    (pam_dir / "svc").write_text(f"auth {how} {included}\nauth required {module}\n")

    result = authenticate(pam_dir, "svc", user, [PASSWORD, totp_now(secret)])

    assert result.name == "PAM_SUCCESS", result
    assert (result.texts("prompt_off") == ["Password: ", "Verification code: "]) is asked
    problems = {f.problem for f in pamstack.analyse(pam_dir, "svc").findings}
    assert (pamstack.Problem.BYPASS in problems) is not asked


def test_install_leaves_a_hand_written_line_alone(pam_dir: Path) -> None:
    """pam_mfa.so already in the file, not put there by `pam install`: it is not touched
    (the administrator's line is theirs), and the message says how to proceed."""
    text = "@include common-auth\nauth required pam_mfa.so timeout=5\n"
    (pam_dir / "sudo").write_text(text)

    result = install(pam_dir, "sudo")

    assert result.exit_code == 1
    assert "was not written by `mfa pam install`" in result.output
    assert (pam_dir / "sudo").read_text() == text


@pytest.mark.parametrize("arg", ["socket=/run/x #y", "fail=open#", "[debug]", ""])
def test_a_module_argument_libpam_would_split_is_refused(pam_dir: Path, arg: str) -> None:
    """An argument with a blank, `#` or bracket would not reach pam_mfa.so as written:
    a usage error, and the file is not touched."""
    before = (pam_dir / "sshd").read_text()

    result = install(pam_dir, "sshd", "--module-arg", arg)

    assert result.exit_code == 2
    assert (pam_dir / "sshd").read_text() == before
