"""Compare mfad trees side by side: the same store, interleaved rounds, one table.

    .venv/bin/python bench/compare.py [--rounds N] [--users N] NAME=DIR [NAME=DIR ...]

DIR holds an `mfad` package (a patched copy of daemon/mfad, say); `base=daemon`
is this tree's own. Each round starts every tree in turn on a fresh copy of
one store seeded by that tree's own code (same users and uids), in the config
bench/run.py uses for its libpam runs, with the users in NSS for mfad only
(bench/run.py's nss_env: nss_wrapper, --nss indexed by default, or files), and
measures: one client and 64 clients on the PAM socket (mfad_load), and
pam_authenticate through libpam with pam_mfa.so (pam_bench). The order rotates
each round so that other work on the machine lands on every tree alike; the
table shows medians over rounds. To try a change, or to compare with a commit:

    d=$(mktemp -d) && cp -r daemon/mfad "$d"/ && patch -d "$d/mfad" -p1 < my-change.patch
    o=$(mktemp -d) && git archive HEAD~3 daemon/mfad | tar -x -C "$o"
    .venv/bin/python bench/compare.py base=daemon proposal="$d" older="$o/daemon"
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run
from conftest import Daemon  # run.py put tests/ on sys.path


def measure(
    tmp: Path,
    bins: dict[str, Path],
    template: Daemon,
    users: Path,
    tree: Path,
    tag: str,
    env: dict[str, str],
) -> dict[str, float]:
    daemon = run.new_daemon(tmp, tag, env)
    for src, dst in ((template.db_path, daemon.db_path), (template.key_path, daemon.key_path)):
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    os.environ["PYTHONPATH"] = str(tree.resolve())
    svc = tmp / f"{tag}.pam.d"
    run.write_service(svc, "mfa", f"{bins['pam_mfa']} socket={daemon.pam_socket}")
    with run.running(daemon):
        t0 = time.monotonic()
        daemon.start(**run.PAM_DAEMON_CONFIG)
        ready = time.monotonic() - t0
        pid = run.daemon_pid(daemon)
        one = run.run_load(bins, daemon.pam_socket, pid, users, [1], seconds=2.5, max_logins=4000)[
            0
        ]
        many = run.run_load(
            bins, daemon.pam_socket, pid, users, [64], seconds=3.5, max_logins=12000, first=4000
        )[0]
        cpu0 = run.proc_status(pid)["cpu_s"]
        pam = run.pam_run(
            bins,
            svc,
            "mfa",
            users,
            tmp / f"{tag}.lat",
            first=16000,
            count=1500,
            warmup=10,
            wrong=False,
            expect=run.PAM_SUCCESS,
        )
        pam_cpu = run.proc_status(pid)["cpu_s"] - cpu0
        wrong = run.pam_run(
            bins,
            svc,
            "mfa",
            users,
            tmp / f"{tag}.lat",
            first=17600,
            count=800,
            warmup=10,
            wrong=True,
            expect=run.PAM_MAXTRIES,
        )
    # a name NSS did not know fails whatever the code: a wrong-code login would not show it
    # (trees from before names were resolved record no uid at all)
    resolves = (tree / "mfad" / "identity.py").exists()
    unresolved = run.audit_logins(daemon).get("unresolved", 0) if resolves else 0
    shutil.rmtree(tmp / tag)
    failed = one["logins"] - one["ok"] + many["logins"] - many["ok"] + pam["errors"] + unresolved
    return {
        "c1_ok_s": one["ok_per_s"],
        "c1_p50_ms": one["p50_us"] / 1000,
        "c1_cpu_us": one["server_cpu_us_per_login"],
        "c64_ok_s": many["ok_per_s"],
        "c64_p99_ms": many["p99_us"] / 1000,
        "c64_cpu_us": many["server_cpu_us_per_login"],
        "pam_mean_us": run.summarise(pam["latencies_ns"])["mean_us"],
        "pam_cpu_us": 1e6 * pam_cpu / (pam["count"] + 10),
        "wrong_mean_us": run.summarise(wrong["latencies_ns"])["mean_us"],
        "ready_s": ready,
        "failed": failed + wrong["errors"],
    }


COLUMNS = [
    ("c1_ok_s", "1 client ok/s", "{:,.0f}"),
    ("c1_p50_ms", "1 client p50 ms", "{:.2f}"),
    ("c1_cpu_us", "CPU µs/login (1)", "{:,.0f}"),
    ("c64_ok_s", "64 clients ok/s", "{:,.0f}"),
    ("c64_p99_ms", "64 clients p99 ms", "{:.1f}"),
    ("c64_cpu_us", "CPU µs/login (64)", "{:,.0f}"),
    ("pam_mean_us", "libpam right mean µs", "{:,.0f}"),
    ("pam_cpu_us", "CPU µs/auth", "{:,.0f}"),
    ("wrong_mean_us", "libpam wrong mean µs", "{:,.0f}"),
    ("ready_s", "READY s", "{:.3f}"),
    ("failed", "failed", "{:.0f}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=DIR")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--nss",
        choices=run.NSS_KINDS,
        default="indexed",
        help="how mfad finds the users (see bench/run.py; default: %(default)s)",
    )
    args = parser.parse_args()
    trees: dict[str, Path] = {}
    for spec in args.trees:
        name, _, path = spec.partition("=")
        tree = run.ROOT / path if not Path(path).is_absolute() else Path(path)
        if not (tree / "mfad" / "__init__.py").exists():
            parser.error(f"{tree}/mfad is not a package")
        trees[name] = tree
    busy = run.wait_quiet(120)
    tmp = Path(tempfile.mkdtemp(prefix="pam-mfa-compare-"))
    tmp.chmod(0o755)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        bins = run.build(tmp)
        uids = run.bench_uids([f"cmp{i:06d}" for i in range(20000)])
        env = run.nss_env(tmp / "nss", uids, args.nss, bins)
        nss = run.nss_probe(env, uids)
        templates: dict[str, tuple[Daemon, Path]] = {}
        for name, tree in trees.items():  # each store in its own tree's schema
            os.environ["PYTHONPATH"] = str(tree.resolve())
            template = run.new_daemon(tmp, f"template-{name}")
            users = run.write_users(tmp / f"users-{name}", run.seed_mfad(template, uids))
            templates[name] = template, users
        names = list(trees)
        probe = run.speed_probe()
        with run.OtherWork() as other:
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    run.log(f"round {r + 1}/{args.rounds}: {name}")
                    template, users = templates[name]
                    rows[name].append(
                        measure(tmp, bins, template, users, trees[name], f"{name}-{r}", env)
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"Medians of {args.rounds} interleaved rounds; cores {100 * busy:.0f} % busy with "
        f"other work at the start; other processes used {other.others_pct} % of the CPU "
        f"during the rounds; speed probe {probe} ms before, {run.speed_probe()} ms after. "
        f"NSS: {args.nss} ({nss['lines']:,} passwd lines), getpwnam {nss['sample_us']} µs "
        f"mean, resolve() {nss['resolve_us']} µs.\n"
    )
    print("| tree | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for name, results in rows.items():
        med: dict[str, Any] = {k: statistics.median(x[k] for x in results) for k, _, _ in COLUMNS}
        print(f"| {name} | " + " | ".join(f.format(med[k]) for k, _, f in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
