#!/usr/bin/env bash
# Install pam-mfa on this machine: build and install pam_mfa.so, install mfad
# and mfa into their own virtualenv, write the config and key if missing, and
# start mfad. Run as root from the repository. Safe to run again: it upgrades
# the code, keeps /etc/mfad as it is, and restarts the daemon.
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

say() { printf '== %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

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
        old=$(cat "$PID_FILE")
        # Only signal the pid if it is still an mfad, not a recycled pid.
        if [[ $old =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q mfad; then
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

cat <<EOM

pam-mfa is installed and mfad answers on $control_socket.
Nothing asks for a code yet. To require one for SSH logins:

  1. In /etc/pam.d/sshd, directly after "@include common-auth", add:
         auth required pam_mfa.so
     (see etc/pam.d/sshd in this repository for the module arguments)
  2. Copy etc/ssh/sshd_config.d/pam-mfa.conf to /etc/ssh/sshd_config.d/,
     check with "sshd -t", then reload sshd.
  3. Enrol each user, e.g. "mfa enroll alice", and scan the QR code.

Keep a root shell open while you test a new login in another terminal.
EOM
