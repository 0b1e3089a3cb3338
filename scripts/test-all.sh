#!/usr/bin/env bash
# Run every test: `scripts/test-all.sh [extra cargo test args]`.
#
# The tests drive the real binary and compare it with qemu-img, so they need qemu-img /
# qemu-io (qemu-utils), gzip, xz and zstd; building needs a C compiler (the xz and zstd
# libraries are compiled in). Missing Debian packages are installed with apt-get when
# run as root; otherwise the script says what to install and stops.
#
# The corpus tests read ../shared/corpus next to the repository; with CI set they fail
# when it is missing, otherwise they are skipped with a message.
set -euo pipefail

cd "$(dirname "$0")/.."

# command -> Debian package
declare -A need=(
    [qemu-img]=qemu-utils
    [qemu-io]=qemu-utils
    [gzip]=gzip
    [xz]=xz-utils
    [zstd]=zstd
    [cc]=gcc
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [htpasswd]=apache2-utils
    [nginx]=nginx
    [tinyproxy]=tinyproxy
    [openssl]=openssl
    [curl]=curl
    [python3]=python3
)
missing=()
for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test-all: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" libc6-dev >/dev/null
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
cargo test --release --no-fail-fast --all-targets "$@" || status=$?
cargo test --release --doc || status=$?
exit "$status"
