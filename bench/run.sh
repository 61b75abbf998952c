#!/usr/bin/env bash
# The benchmarks in one command (as root, from anywhere):
#
#   bash bench/run.sh            # full run, 10 to 15 minutes on 2 cores
#   bash bench/run.sh --quick    # small counts, about 5 minutes
#   bash bench/run.sh --help     # --only pam|capacity|fleet, --no-profile, --daemon-path DIR
#
# Builds pam_mfa.so (its own Makefile) and the C drivers into a temporary
# directory, runs everything there, removes it and stops every daemon (and
# PostgreSQL server) it started. Tables go to stdout and bench/out/. See bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "bench: no .venv here; create it first (scripts/test.sh does)" >&2
    exit 2
fi
exec .venv/bin/python bench/run.py "$@"
