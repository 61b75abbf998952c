#!/usr/bin/env bash
# Build pam-mfa and run its whole test suite: lint, types, then pytest.
#
#   bash scripts/test.sh [pytest arguments...]
#
# Meant for a fresh Debian 12 machine as root with no terminal (that is how CI
# runs it through .ci/run): it installs what the tests need, creates or
# updates the test virtualenv at .venv, builds the PAM module, runs ruff and
# mypy, then pytest. Any failure, including pytest collecting no test (exit
# 5), exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh: run as root: the tests create users and start sshd" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# Debian packages the build and the tests use.
apt_packages=(
    gcc make pkg-config libpam0g-dev          # build pam_mfa.so
    python3-venv python3-dev                  # the test virtualenv (python3-dev: any sdist build)
    openssh-server openssh-client             # the real sshd login test
    libpam-wrapper                            # run libpam/sshd against test service files
    libnss-wrapper                            # a case-insensitive name service (tests/nsswrap.py)
    libpam-modules passwd                     # pam_unix, useradd/chpasswd for throwaway users
    sudo login util-linux                     # the real sudo, su and login (tests/privatepam.py;
                                              # util-linux: unshare, setpriv)
    oathtool                                  # codes from an independent TOTP implementation
    faketime                                  # libfaketime: a wall clock the tests move, under
                                              # mfad only (tests/fakeclock.py)
    zbar-tools                                # decode the enrolment QR code back to its URI
    valgrind                                  # the PAM-module tests under valgrind
    clang sqlite3 libpam-google-authenticator # on hand for tests: a second C compiler, the
                                              # sqlite3 shell, google-authenticator's module
    libclang-rt-14-dev                        # clang's libFuzzer, for pam_module/fuzz (only
                                              # recommended by clang, so not pulled in)
    clang-format                              # the lint step's check of the C against
                                              # pam_module/.clang-format
    postgresql                                # server binaries for the private cluster of
                                              # tests/pgcluster.py (the PostgreSQL store)
    mmdebstrap                                # the clean Debian 12 root of
                                              # tests/test_install_clean_root.py
    debhelper help2man lintian                # build the Debian package (scripts/build-deb.sh:
                                              # man pages from --help, lintian on the .deb)
    systemd                                   # systemd-analyze verify of the unit
)
# shellcheck source=scripts/apt.sh
. scripts/apt.sh  # the working directory is the repository root (cd above)
apt_ensure "${apt_packages[@]}"

# The test virtualenv: Debian's python refuses system-wide pip (PEP 668).
# Reinstall only when pyproject.toml changed since the last install.
if [[ ! -x .venv/bin/python ]]; then
    echo "== creating .venv"
    /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.pam-mfa-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "== pip install -e '.[test]'"
    .venv/bin/pip install -q -e '.[test]'
    echo "$want" >"$stamp"
fi

echo "== building pam_module"
make -s -C pam_module

echo "== ruff (check, format) + mypy (daemon, cli, tests) + clang-format"
make -s lint

echo "== pytest"
rc=0
.venv/bin/pytest "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "scripts/test.sh: pytest collected no tests" >&2
fi
exit "$rc"
