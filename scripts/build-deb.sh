#!/usr/bin/env bash
# Build the Debian package pam-mfa from this tree (make deb):
#
#   bash scripts/build-deb.sh [OUTDIR]      (default OUTDIR: build/deb)
#
# Copies the tracked and untracked-but-not-ignored files (so uncommitted work is
# built, and nothing from .venv or an earlier build) into OUTDIR/src, runs
# dpkg-buildpackage there, and leaves pam-mfa_VERSION_ARCH.deb in OUTDIR, then
# runs lintian on it. Needs debhelper, help2man, python3-venv, libpam0g-dev
# (installed if missing, as root) and PyPI, where pip fetches mfad's libraries.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

out=$(realpath -m "${1:-build/deb}")
src=$out/src

build_packages=(debhelper help2man python3-venv libpam0g-dev pkg-config gcc make fakeroot lintian)
if [[ $(id -u) -eq 0 ]]; then
    # shellcheck source=scripts/apt.sh
    . scripts/apt.sh
    apt_ensure "${build_packages[@]}"
fi

rm -rf "$src"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src"
rm -f "$out"/pam-mfa_* "$out"/pam-mfa-dbgsym_*

echo "== dpkg-buildpackage in $src"
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed (log: $out/build.log)" >&2
    exit 1
}
rm -rf "$src"
deb=$(ls "$out"/pam-mfa_*.deb)
echo "== lintian $deb"
lintian --fail-on error,warning --info "$deb"
echo "$deb"
