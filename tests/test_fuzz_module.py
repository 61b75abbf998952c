"""pam_mfa.c under libFuzzer with ASan and UBSan: pam_module/fuzz/fuzz_relay.c.

The harness runs the module's own code (it #includes pam_mfa.c) through a real
libpam handle, against a thread playing mfad on a real root-owned Unix socket:
the fuzz input is the daemon's byte stream plus the user's answers. It checks
every message the user sees, every ANSWER mfad hears, the PAM code and the
"unreachable" log line against docs/protocol.md, and aborts on a difference as
on any sanitizer report.

Here: a short run from the seed corpus finds nothing; every saved regression
replays clean; and copies of pam_mfa.c with a planted bug (a length check
removed, the "mfad has spoken" bookkeeping removed) are caught within seconds,
so the harness demonstrably reaches the frame parser and its oracle bites.

The long run, as root::

    nice -n 10 make -C pam_module fuzz-run FUZZ_TIME=2400 FUZZ_WORK=/tmp/pam-mfa-fuzz

Done once on 2026-11-23 (2 cores, one job): 2,401 s, 6,438,779 inputs (2,681/s),
cov 263 / ft 792, 183 corpus units, no crash or leak. 85% of pam_mfa.c's lines
ran; the rest (connect-time socket checks, timeouts, I/O and allocation
failures, PAM item checks, pam_sm_setcred) no daemon byte can reach. Every
find is an input in pam_module/fuzz/regressions/: the first short runs found
that a conversation failing with PAM_AUTH_ERR or PAM_AUTHINFO_UNAVAIL came out
as that code, the latter logged as mfad breaking off; pam_mfa.c now returns
PAM_CONV_ERR.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parent.parent / "pam_module"
FUZZ_DIR = MODULE_DIR / "fuzz"
CORPUS = FUZZ_DIR / "corpus"
REGRESSIONS = FUZZ_DIR / "regressions"
DICT = FUZZ_DIR / "relay.dict"

SHORT_RUN = 30  # seconds of fuzzing in CI; the long run is documented above
PLANTED_BUG_LIMIT = 60  # seconds the fuzzer gets to find a planted bug (it needs well under 1)
MIN_RUNS = 10_000  # this 2-core machine does about 4,000 a second; anything less is not fuzzing


def build(out: Path, module_source: Path | None = None) -> Path:
    """The harness built by pam_module/Makefile's fuzz target into `out`, against
    `module_source` (default: the shipped pam_mfa.c)."""
    binary = out / "fuzz_relay"
    args = ["make", "-s", "-C", str(MODULE_DIR), "fuzz", f"FUZZ_BIN={binary}"]
    if module_source is not None:
        args.append(f"FUZZ_MODULE={module_source}")
    subprocess.run(args, check=True, timeout=300)
    return binary


def libfuzzer_missing(scratch: Path) -> str | None:
    """Why clang cannot link a libFuzzer target here, or None when it can."""
    if shutil.which("clang") is None:
        return "clang is not installed"
    probe = scratch / "probe.c"
    probe.write_text(
        "#include <stddef.h>\n#include <stdint.h>\n"
        "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n"
    )
    done = subprocess.run(
        ["clang", "-fsanitize=fuzzer,address,undefined", "-o", str(scratch / "probe"), str(probe)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        return f"clang cannot link libFuzzer (Debian: libclang-rt-14-dev): {done.stderr[-300:]}"
    return None


@pytest.fixture(scope="session")
def build_dir() -> Iterator[Path]:
    """A scratch directory for the harness builds, skipping the module's fuzz tests
    only when clang's libFuzzer is genuinely unavailable."""
    out = Path(tempfile.mkdtemp(prefix="mfa-fuzz-build-"))
    try:
        reason = libfuzzer_missing(out)
        if reason is not None:
            pytest.skip(reason)
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def harness(build_dir: Path) -> Path:
    """fuzz_relay built against the shipped pam_mfa.c."""
    shipped = build_dir / "shipped"
    shipped.mkdir()
    return build(shipped)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """Where the harness makes its mfad socket (PAM_MFA_FUZZ_DIR): short enough for
    sun_path, and removed afterwards even if a crash left the socket behind."""
    path = Path(tempfile.mkdtemp(prefix="mfa-fz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fuzz(
    binary: Path, work: Path, socket_dir: Path, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run the harness with `args`, crash artifacts into `work`, one process (no -jobs)."""
    return subprocess.run(
        [str(binary), f"-artifact_prefix={work}/", "-timeout=60", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PAM_MFA_FUZZ_DIR": str(socket_dir)},
        cwd=work,
    )


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_short_run_from_the_seed_corpus_finds_no_crash(
    harness: Path, tmp_path: Path, socket_dir: Path
) -> None:
    """libFuzzer mutates the seed corpus (a normal login, enrolment, every message type
    and outcome, the fail-closed matrix's broken daemons) for SHORT_RUN seconds: no
    sanitizer report, no departure from docs/protocol.md, exit 0. New inputs go to a
    scratch corpus; the repository's corpus is untouched, and the harness removes its
    socket directory on the way out."""
    seeds_before = digest(CORPUS)
    scratch = tmp_path / "corpus"
    scratch.mkdir()

    done = fuzz(
        harness,
        tmp_path,
        socket_dir,
        f"-max_total_time={SHORT_RUN}",
        f"-dict={DICT}",
        "-print_final_stats=1",
        str(scratch),
        str(CORPUS),
        timeout=SHORT_RUN + 120,
    )

    tail = done.stderr[-3000:]
    assert done.returncode == 0, tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*")), tail
    runs = re.search(r"^Done (\d+) runs", done.stderr, re.MULTILINE)
    assert runs is not None and int(runs.group(1)) >= MIN_RUNS, tail
    assert any(scratch.iterdir()), "the run added nothing to its scratch corpus"
    assert digest(CORPUS) == seeds_before
    assert list(socket_dir.iterdir()) == []


def test_every_seed_and_saved_regression_replays_clean(
    harness: Path, tmp_path: Path, socket_dir: Path
) -> None:
    """Each seed and each input that once broke the module (pam_module/fuzz/regressions/,
    see the file names) runs once through the harness and matches docs/protocol.md."""
    inputs = sorted(CORPUS.iterdir()) + sorted(REGRESSIONS.iterdir())
    assert any(p.parent == REGRESSIONS for p in inputs)

    done = fuzz(harness, tmp_path, socket_dir, *map(str, inputs), timeout=120)

    assert done.returncode == 0, done.stderr[-3000:]
    for path in inputs:
        assert f"Executed {path} in" in done.stderr


# Planted bugs: (pam_mfa.c text, replacement, occurrences, what the fuzzer must report).
PLANTED = {
    # A zero-length frame is accepted: the relay copies len - 1 = SIZE_MAX bytes.
    "zero-length-frame-accepted": (
        "if (len < 1 || len > MAX_FRAME)",
        "if (len > MAX_FRAME)",
        1,
        "ERROR: AddressSanitizer",
    ),
    # fail=open stays in force after mfad has prompted: a break then skips the module.
    "spoken-never-set": (
        "r->spoken = 1;",
        "",
        2,
        "docs/protocol.md says",
    ),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_bug_is_found_within_seconds(
    build_dir: Path, tmp_path: Path, socket_dir: Path, bug: str
) -> None:
    """A copy of pam_mfa.c with one check removed, fuzzed from the seed corpus, crashes
    the harness within PLANTED_BUG_LIMIT seconds: ASan catches the missing length check
    (so the fuzz input reaches the frame parser), and the protocol oracle catches the
    fail=open mistake, which no sanitizer could see. The crashing input is saved."""
    old, new, count, report = PLANTED[bug]
    source = (MODULE_DIR / "pam_mfa.c").read_text()
    assert source.count(old) == count, f"pam_mfa.c changed; update the planted bug {bug!r}"
    mutant = tmp_path / "pam_mfa.c"
    mutant.write_text(source.replace(old, new))
    binary = build(tmp_path, mutant)
    scratch = tmp_path / "corpus"
    scratch.mkdir()

    started = time.monotonic()
    done = fuzz(
        binary,
        tmp_path,
        socket_dir,
        f"-max_total_time={PLANTED_BUG_LIMIT}",
        f"-dict={DICT}",
        str(scratch),
        str(CORPUS),
        timeout=PLANTED_BUG_LIMIT + 120,
    )
    elapsed = time.monotonic() - started

    assert done.returncode != 0, f"not found in {elapsed:.0f} s"
    assert report in done.stderr, done.stderr[-3000:]
    assert list(tmp_path.glob("crash-*"))
    assert elapsed < PLANTED_BUG_LIMIT
