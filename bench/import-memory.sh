#!/usr/bin/env bash
# Peak memory of a CDI import of a multi-GiB image: serves IMAGE with nginx on
# 127.0.0.1 (../shared/servers/nginx_start.sh) and runs `diskimport import`
# with CDI's environment into a Filesystem root, under /usr/bin/time -v.
#
# usage: bench/import-memory.sh IMAGE [WORKDIR]
# (bench/compare-qemu.sh leaves a 2 GiB qcow2 in ${TMPDIR:-/tmp}/diskimport-bench)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
image=${1:?usage: bench/import-memory.sh IMAGE [WORKDIR]}
work=${2:-$(mktemp -d)}
servers="$here/../shared/servers"
bin="$here/target/release/diskimport"
(cd "$here" && cargo build --release --quiet)

mkdir -p "$work/www" "$work/importer-root/data" "$work/importer-root/dev"
ln -sf "$(readlink -f "$image")" "$work/www/disk.img"
eval "$("$servers/nginx_start.sh" "$work/nginx" "$work/www" | grep -E '^(HTTP_PORT|NGINX_PID)=')"
trap 'kill "$NGINX_PID" 2>/dev/null || true' EXIT

env -i PATH="$PATH" \
  IMPORTER_SOURCE=http IMPORTER_ENDPOINT="http://127.0.0.1:$HTTP_PORT/disk.img" \
  IMPORTER_CONTENTTYPE=kubevirt OWNER_UID=bench FILESYSTEM_OVERHEAD=0 \
  DISKIMPORT_STATUS_ADDR=127.0.0.1 DISKIMPORT_STATUS_PORT=0 \
  /usr/bin/time -v "$bin" -alsologtostderr -v=1 --root "$work/importer-root" 2> "$work/time.txt"
cat "$work/importer-root/dev/termination-log"; echo
grep -E "Elapsed|Maximum resident" "$work/time.txt"
ls -ls "$work/importer-root/data/disk.img"
rm -rf "$work/importer-root/data/disk.img"
