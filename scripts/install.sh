#!/usr/bin/env bash
# Install pam-mfa on this machine: build and install pam_mfa.so, install mfad
# and mfa into their own virtualenv, write the config and key if missing, and
# start mfad. Run as root from the repository. Safe to run again: it upgrades
# the code, keeps /etc/mfad as it is, and restarts the daemon.

say() { printf '== %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# The pid in the pid file $1 if that process is still an mfad (not a pid the kernel has
# since given to another program); nothing, and no complaint, if it has gone.
running_mfad_pid() {
    local pid cmdline
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    { cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline"); } 2>/dev/null || return 0
    [[ $cmdline == *mfad* ]] && printf '%s\n' "$pid"
    return 0
}

# The PAM services in directory $1 (/etc/pam.d) whose auth stack has pam_mfa.so: on a
# line of their own, or in a file they @include (common-auth), one name per line.
pam_mfa_services() {
    local dir=$1 file name included
    local -a with=()
    for file in "$dir"/*; do
        [[ -f $file ]] || continue
        if grep -Eq '^[[:space:]]*-?auth[[:space:]].*pam_mfa\.so' "$file"; then
            with+=("${file##*/}")
        fi
    done
    for file in "$dir"/*; do
        [[ -f $file ]] || continue
        name=${file##*/}
        if printf '%s\n' "${with[@]}" | grep -qxF -- "$name"; then
            printf '%s\n' "$name"
            continue
        fi
        for included in "${with[@]}"; do
            if awk -v n="$included" '($1 == "@include" && $2 == n) ||
                ($1 ~ /^-?auth$/ && ($2 == "include" || $2 == "substack") && $3 == n) { f = 1 }
                END { exit !f }' "$file"; then
                printf '%s\n' "$name"
                break
            fi
        done
    done
}

# What is in force after the install: which PAM services in $1 ask for codes, and under
# which mode of the config $2 (read by mfad's own parser, run by the python $3).
describe_in_force() {
    local dir=$1 conf=$2 python=$3
    local -a services
    mapfile -t services < <(pam_mfa_services "$dir")
    if (( ${#services[@]} == 0 )); then
        cat <<EOM
Nothing asks for a code yet: no PAM service in $dir uses pam_mfa.so. To require
one for SSH logins:

  1. In $dir/sshd, directly after "@include common-auth", add:
         auth required pam_mfa.so
     (see etc/pam.d/sshd in this repository for the module arguments)
  2. Copy etc/ssh/sshd_config.d/pam-mfa.conf to /etc/ssh/sshd_config.d/,
     check with "sshd -t", then reload sshd.
  3. Enrol each user, e.g. "mfa enroll alice", and scan the QR code.

Keep a root shell open while you test a new login in another terminal.
EOM
        return 0
    fi
    printf 'pam_mfa.so is in force for these PAM services (%s):\n' "$dir"
    "$python" - "$conf" "${services[@]}" <<'PY'
import sys
from pathlib import Path

from mfad.config import load

WHAT = {
    "off": "nobody is asked for a code",
    "optional": "users who enrolled, or whom you require (mfa require, require_groups), "
    "give a code",
    "required": "every user not exempt gives a code, or enrols at the next login",
}
config = load(Path(sys.argv[1]))
width = max(len(s) for s in sys.argv[2:])
for service in sys.argv[2:]:
    mode = config.mode_for(service)
    print(f"  {service:<{width}}  mode {mode}: {WHAT.get(mode, mode)}")
PY
    echo '"mfa list" shows who is enrolled, pending or exempt.'
}

# Sourced (tests/test_install_script.py checks the functions above alone): stop here.
# `return` succeeds only in a sourced file, whatever $0 is.
if (return 0 2>/dev/null); then return 0; fi

set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

PREFIX=/opt/pam-mfa
VENV=$PREFIX/venv
CONF_DIR=/etc/mfad
CONF=$CONF_DIR/mfad.yaml
KEY=$CONF_DIR/secret.key
RUN_DIR=/run/mfad
PID_FILE=$RUN_DIR/mfad.pid
LOG_FILE=/var/log/mfad/mfad.log

[[ $(id -u) -eq 0 ]] || die "run as root"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

apt_packages=(
    gcc make pkg-config libpam0g-dev    # build pam_mfa.so against libpam
    python3-venv                        # the daemon's private virtualenv
    python3-dev                         # headers, should pip have to build a dependency from source
)
# shellcheck source=scripts/apt.sh
. scripts/apt.sh  # the working directory is the repository root (cd above)
apt_ensure "${apt_packages[@]}"

# The PAM module directory is where the distribution keeps pam_unix.so
# (/usr/lib/x86_64-linux-gnu/security on Debian amd64).
pam_dir=""
for dir in /usr/lib/*/security /lib/*/security /usr/lib/security /lib/security; do
    if [[ -e $dir/pam_unix.so ]]; then pam_dir=$dir; break; fi
done
[[ -n $pam_dir ]] || die "cannot find the PAM module directory (no pam_unix.so)"

say "building pam_mfa.so and installing it into $pam_dir"
make -s -C pam_module
make -s -C pam_module install PAMDIR="$pam_dir"
[[ -f $pam_dir/pam_mfa.so ]] || die "pam_module's make install did not create $pam_dir/pam_mfa.so"

# Debian's python refuses system-wide pip (PEP 668), so mfad and mfa live in
# their own virtualenv and only their entry points are linked onto PATH.
say "installing mfad and mfa into $VENV"
install -d -m 0755 "$PREFIX"
[[ -x $VENV/bin/python ]] || /usr/bin/python3 -m venv "$VENV"
# pip reinstalls a local project on every run, so a re-run picks up new code.
"$VENV/bin/pip" install -q .
ln -sfn "$VENV/bin/mfad" /usr/local/sbin/mfad
ln -sfn "$VENV/bin/mfa" /usr/local/bin/mfa

install -d -m 0755 "$CONF_DIR"
if [[ ! -e $CONF ]]; then
    say "writing $CONF"
    install -m 0644 etc/mfad.yaml "$CONF"
else
    say "keeping existing $CONF"
fi
if [[ ! -e $KEY ]]; then
    say "creating the secret key $KEY"
    /usr/local/sbin/mfad --generate-key "$KEY"
fi
chown root:root "$KEY"
chmod 0600 "$KEY"
install -d -m 0700 /var/lib/mfad
install -d -m 0750 /var/log/mfad

# Check the config before touching a running daemon: a bad file leaves it running.
/usr/local/sbin/mfad --check-config --config "$CONF" >/dev/null \
    || die "$CONF is not valid (see above); fix it and run again"
# The control socket path comes from the config the daemon will read, through
# the daemon's own parser, so the readiness check looks where mfad listens.
control_socket=$("$VENV/bin/python" -c \
    'import sys; from pathlib import Path; from mfad.config import load
print(load(Path(sys.argv[1])).control_socket)' "$CONF")

socket_answers() {
    "$VENV/bin/python" - "$control_socket" <<'PY' 2>/dev/null
import socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(2)
    s.connect(sys.argv[1])
PY
}

wait_for_socket() {
    local pid=${1:-} i
    for i in $(seq 1 150); do
        socket_answers && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# sd_booted(): systemd is PID 1 exactly when /run/systemd/system exists.
if [[ -d /run/systemd/system ]]; then
    say "installing and starting mfad.service"
    install -m 0644 systemd/mfad.service /etc/systemd/system/mfad.service
    systemctl daemon-reload
    if systemctl is-active --quiet mfad; then
        systemctl enable --quiet mfad
        systemctl restart mfad
    else
        systemctl enable --quiet --now mfad
    fi
    wait_for_socket || {
        systemctl status --no-pager mfad >&2 || true
        die "mfad did not come up (journalctl -u mfad)"
    }
else
    say "systemd is not PID 1: starting mfad in the background"
    install -d -m 0755 "$RUN_DIR"
    if [[ -f $PID_FILE ]]; then
        old=$(running_mfad_pid "$PID_FILE")
        # Only signal the pid if it is still an mfad, not a recycled pid.
        if [[ -n $old ]]; then
            say "stopping the running mfad (pid $old)"
            kill -TERM "$old"
            for _ in $(seq 1 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$old" 2>/dev/null; then kill -KILL "$old"; fi
        fi
        rm -f "$PID_FILE"
    fi
    [[ -e $LOG_FILE ]] || install -m 0640 /dev/null "$LOG_FILE"
    setsid /usr/local/sbin/mfad --config "$CONF" </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    if ! wait_for_socket "$pid"; then
        tail -n 20 "$LOG_FILE" >&2 || true
        die "mfad did not come up (log: $LOG_FILE)"
    fi
    say "mfad is running (pid $pid, pid file $PID_FILE, log $LOG_FILE)"
fi

printf '\npam-mfa is installed and mfad answers on %s.\n' "$control_socket"
describe_in_force /etc/pam.d "$CONF" "$VENV/bin/python"
