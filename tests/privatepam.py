"""Run the system's own setuid PAM programs (sudo, su, login) against a test PAM stack.

pam_wrapper cannot do this: it is an LD_PRELOAD library, and the dynamic loader
ignores LD_PRELOAD for a setuid program started by another user, which is how
sudo and su are used. Instead `session()` starts the program in a private mount
namespace (``unshare --mount``, as root) where a test directory is bound over
/etc/pam.d, a test sudoers file over /etc/sudoers, and empty files or a tmpfs
over what the programs write (sudo's timestamps, login's utmp and wtmp), then
drops to the user (``setpriv``) and runs the program on a pseudo-terminal
(pexpect), answering its prompts as a person would. The host's files are never
opened for writing; the namespace ends with the program.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

PROMPT_TIMEOUT = 30.0
# Files the programs write that must not change on the host: a private copy each.
WRITTEN_FILES = ("/run/utmp", "/var/log/wtmp", "/var/log/btmp", "/var/log/lastlog")

Answer = str | Callable[[str], str]
"""What to type at a prompt: the text, or a function of what the terminal showed so far."""


@dataclass
class Terminal:
    """What one run showed: the transcript, the prompts met (by pattern), how it ended."""

    output: str
    prompts: list[str] = field(default_factory=list)
    exit_status: int | None = None
    stopped: bool = False  # a prompt came that we had no answer left for


@dataclass
class PrivatePam:
    """A PAM service directory and a sudoers file, bound over the real ones per run."""

    root: Path

    @property
    def pam_dir(self) -> Path:
        return self.root / "pam.d"

    def service(self, name: str, auth_lines: Sequence[str]) -> None:
        """The PAM service `name`: `auth_lines`, then account and session that allow."""
        self.pam_dir.mkdir(exist_ok=True)
        lines = [*auth_lines, "account required pam_permit.so", "session required pam_permit.so"]
        (self.pam_dir / name).write_text("".join(f"{line}\n" for line in lines))
        (self.pam_dir / "other").write_text(
            "".join(f"{kind} required pam_deny.so\n" for kind in ("auth", "account", "session"))
        )

    def sudoers(self, text: str) -> None:
        path = self.root / "sudoers"
        path.write_text(text)
        path.chmod(0o440)  # sudo refuses a sudoers file anyone may write

    def run(
        self,
        argv: Sequence[str],
        answers: dict[str, Sequence[Answer]],
        *,
        as_user: str | None = None,
    ) -> Terminal:
        """Run `argv` on a pseudo-terminal in the private namespace, as `as_user` (or root).

        `answers` maps a prompt (a regular expression) to what to type at each time it
        appears, in order; a prompt with no answer left stops the run (`stopped`).
        """
        script = [f"mount --bind {shlex.quote(str(self.pam_dir))} /etc/pam.d"]
        if (self.root / "sudoers").exists():
            script.append(f"mount --bind {shlex.quote(str(self.root / 'sudoers'))} /etc/sudoers")
        if os.path.isdir("/run/sudo"):
            script.append("mount -t tmpfs -o mode=0711 tmpfs /run/sudo")
        for written in WRITTEN_FILES:
            if os.path.exists(written):
                copy = self.root / ("written" + written.replace("/", "_"))
                copy.touch()
                script.append(f"mount --bind {shlex.quote(str(copy))} {written}")
        command = list(argv)
        if as_user is not None:
            entry = pwd.getpwnam(as_user)
            command = [
                "setpriv",
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--init-groups",
                "--reset-env",
                "--",
                *command,
            ]
        script.append("exec " + shlex.join(command))
        child = pexpect.spawn(
            "unshare",
            ["--mount", "--propagation", "private", "--", "/bin/sh", "-ec", "\n".join(script)],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"},
            encoding="utf-8",
            codec_errors="replace",
            timeout=PROMPT_TIMEOUT,
        )
        screen = io.StringIO()
        child.logfile_read = screen
        pending = {prompt: list(given) for prompt, given in answers.items()}
        patterns = [*pending, pexpect.EOF]
        result = Terminal(output="")
        try:
            while True:
                which = child.expect(patterns)
                if which == len(pending):
                    break
                prompt = list(pending)[which]
                if not pending[prompt]:
                    result.stopped = True
                    break
                result.prompts.append(prompt)
                answer = pending[prompt].pop(0)
                child.sendline(answer(_shown(screen)) if callable(answer) else answer)
        except pexpect.TIMEOUT as exc:
            raise AssertionError(
                f"{argv[0]} waited over {PROMPT_TIMEOUT:g}s; the terminal showed:\n{_shown(screen)}"
            ) from exc
        finally:
            child.close(force=True)
            result.output = _shown(screen)
        result.exit_status = None if result.stopped else child.exitstatus
        return result


def _shown(screen: io.StringIO) -> str:
    """The terminal's text so far, with the tty's CR LF line ends as plain newlines."""
    return re.sub(r"\r+\n", "\n", screen.getvalue())


@contextmanager
def private_pam() -> Iterator[PrivatePam]:
    """A PrivatePam in a fresh directory (0755: the programs read it as root, and setpriv
    runs them as a user), removed after."""
    with tempfile.TemporaryDirectory(prefix="pam-mfa-private-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        yield PrivatePam(root)
