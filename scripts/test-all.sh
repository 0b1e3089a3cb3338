#!/usr/bin/env bash
# Run every test: `scripts/test-all.sh [extra cargo test args]`.
#
# The tests drive the real binary and compare it with qemu-img, against real servers,
# loop devices, tmpfs mounts and memory cgroups; the Debian packages they need are in
# scripts/packages.txt (shared with .ci/run). Missing ones are installed with apt-get
# when run as root; otherwise the script says what to install and stops.
#
# A test that cannot run here (not root, a program or ../shared missing) is skipped
# visibly: it prints SKIPPED, appends a line to target/test-skips.log, and the summary
# at the end counts them. With CI set every such test fails instead.
set -euo pipefail

cd "$(dirname "$0")/.."

# The Debian packages the tests need: one list, shared with .ci/run.
mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]//g' scripts/packages.txt)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test-all: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "test-all: missing packages: ${missing[*]}" >&2
        echo "install them, e.g.: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "test-all: cargo not found; install Rust (>= 1.85) with rustup: https://rustup.rs" >&2
    exit 1
fi

# s3s-fs: the S3 server that tests/s3_source.rs starts (pinned: 0.15+ needs rustc 1.96).
# Compiled once (~2 min); skipped when that version is already on PATH.
if [[ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs 0.14.1" ]]; then
    echo "test-all: installing s3s-fs 0.14.1 (cargo install, ~2 min)" >&2
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

# Release build: the matrix and corpus tests convert real images. --no-fail-fast: every
# test binary runs, so one failure does not hide the others.
status=0
skips=target/test-skips.log
mkdir -p target
: >"$skips"
export DISKIMPORT_SKIP_LOG="$PWD/$skips"
cargo test --release --no-fail-fast --all-targets "$@" || status=$?
cargo test --release --doc || status=$?
count=$(grep -c '^SKIPPED' "$skips" || true)
echo
if [[ $count -gt 0 ]]; then
    echo "test-all: $count test(s) SKIPPED (could not run here; they fail under CI):"
    sed 's/^/  /' "$skips"
else
    echo "test-all: no test skipped"
fi
exit "$status"
