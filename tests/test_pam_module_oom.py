"""pam_mfa.so out of memory, through the real libpam: PAM_BUF_ERR, kept distinct.

tests/mallocfail.c, preloaded into the C driver (tests/pamdriver.c), makes the
module's own malloc() return NULL after MALLOCFAIL_AFTER successes; libpam, the
driver and everything else allocate as usual. The module allocates twice over:
its frame buffer, before it connects, and a copy of each PROMPT, INFO or ERROR
text. Running out is neither the user's conversation failing (PAM_CONV_ERR)
nor mfad being unreachable (PAM_IGNORE under fail=open): it is PAM_BUF_ERR,
returned as such (docs/protocol.md).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pamtest import PamResult, authenticate, build_c, write_service
from peers import PROMPT, conversation, outcome_peer, serve

MALLOCFAIL_SOURCE = Path(__file__).with_name("mallocfail.c")
CODE = "123456"


@pytest.fixture(scope="session")
def mallocfail() -> Path:
    """tests/mallocfail.c as an LD_PRELOAD library (see its header)."""
    return build_c(MALLOCFAIL_SOURCE, shared=True, libs=["-ldl"])


class Login:
    """One short-pathed directory (sun_path holds 108 bytes) with the peer's socket,
    a service running only pam_mfa.so (fail=open), and the hook's report file."""

    def __init__(self, module: Path, library: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mfa-oom-"))
        self.sock = self.dir / "pam.sock"
        self.services = self.dir / "services"
        self.report = self.dir / "mallocfail.txt"
        self.library = library
        args = f"socket={self.sock} timeout=2 fail=open"
        write_service(self.services, "mfatest", [f"auth required {module} {args}"])

    def run(self, after: int | None) -> PamResult:
        """pam_authenticate with the module's malloc() failing after `after` calls
        (None: never), answering CODE to a prompt."""
        env = {"MALLOCFAIL_REPORT": str(self.report)}
        if after is not None:
            env["MALLOCFAIL_AFTER"] = str(after)
        return authenticate(
            self.services, "mfatest", "alice", [CODE], preload_extra=[str(self.library)], env=env
        )

    def counted(self) -> str:
        return self.report.read_text().strip()


@pytest.fixture
def login(pam_module: Path, mallocfail: Path) -> Iterator[Login]:
    setup = Login(pam_module, mallocfail)
    yield setup
    shutil.rmtree(setup.dir, ignore_errors=True)


def test_the_hook_sees_exactly_the_modules_allocations(login: Login) -> None:
    """Control: with nothing failing, a login of one prompt, one INFO and one
    ERROR succeeds, and the hook counted four calls from pam_mfa.so (the frame
    buffer and three text copies): it neither misses the module nor takes
    libpam's or the driver's allocations for the module's."""
    with serve(login.sock, outcome_peer("S", CODE)) as peer:
        result = login.run(after=None)
    assert result.name == "PAM_SUCCESS"
    assert peer.answers == [CODE] and peer.errors == []
    assert login.counted() == "module malloc: 4 succeeded, 0 failed"


def test_no_memory_for_the_frame_buffer_is_buf_err_not_the_fail_open_skip(login: Login) -> None:
    """The frame buffer cannot be had: PAM_BUF_ERR before any connection, not
    the PAM_IGNORE that fail=open gives an unreachable daemon."""
    with serve(login.sock, outcome_peer("S", CODE)) as peer:
        result = login.run(after=0)
    assert result.name == "PAM_BUF_ERR"
    assert result.messages == []
    assert peer.connections == 0
    assert login.counted() == "module malloc: 0 succeeded, 1 failed"


@pytest.mark.parametrize(
    "step",
    [("P", PROMPT), ("p", "Token name: "), ("I", "info"), ("E", "error")],
    ids=["prompt-echo-off", "prompt-echo-on", "info", "error"],
)
def test_no_memory_for_the_daemons_text_is_buf_err_not_a_conversation_error(
    login: Login, step: tuple[str, str]
) -> None:
    """The module's copy of a prompt, INFO or ERROR text cannot be had: the user
    is shown nothing, mfad hears no answer, and the code is PAM_BUF_ERR, not
    PAM_CONV_ERR (the user's client failing) nor a break (PAM_AUTHINFO_UNAVAIL)."""
    with serve(login.sock, conversation([step], outcome="S")) as peer:
        result = login.run(after=1)
    assert result.name == "PAM_BUF_ERR"
    assert result.messages == []
    assert peer.answers == [] and peer.connections == 1
    assert login.counted() == "module malloc: 1 succeeded, 1 failed"
