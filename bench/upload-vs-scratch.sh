#!/usr/bin/env bash
# Side by side: a qcow2 uploaded to `diskimport upload-server` (converted in the
# stream, straight to disk.img) and, as the anchor, what cdi-uploadserver does
# with the same bytes: write them to /scratch/tmpimage, then
# `qemu-img convert -O raw` to disk.img. Prints wall time and bytes written to
# storage (write_bytes of /proc/PID/io, children included) of each, and checks
# that both disks are identical.
#
# The anchor's first step is a local copy (dd with fsync), not an HTTPS
# transfer: that favours the anchor, so the comparison is conservative.
#
# usage: bench/upload-vs-scratch.sh [-i IMAGE] [WORKDIR] [SIZE]
#   -i IMAGE  the qcow2 to upload (e.g. a dense 2 GiB one); without it an ext4
#             image of SIZE, built from a real tree, is made once in WORKDIR
#   WORKDIR   where images and targets go (default: ${TMPDIR:-/tmp}/diskimport-bench,
#             shared with bench/compare-qemu.sh, whose 2 GiB qcow2 is reused)
#   SIZE      virtual size of the built image (default: $SIZE, else 2G); try 256M first
# The target's size (UPLOAD_IMAGE_SIZE) is the image's virtual size.
# env: BENCH_DROP_CACHES=0 to keep the page cache between steps;
#      DISKIMPORT_BIN=PATH to use a built binary instead of building one.
set -euo pipefail

image=
while getopts i: opt; do
  case $opt in
    i) image=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-${TMPDIR:-/tmp}/diskimport-bench}
size=${2:-${SIZE:-2G}}
mkdir -p "$work"
work=$(cd "$work" && pwd)
bin=${DISKIMPORT_BIN:-$here/target/release/diskimport}
[ -n "${DISKIMPORT_BIN:-}" ] || (cd "$here" && cargo build --release --quiet)

if [ -n "$image" ]; then
  [ -r "$image" ] || { echo "cannot read $image" >&2; exit 2; }
  img=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")
else
  img="$work/fs-$size.qcow2"
fi
if [ ! -s "$img" ]; then
  echo "building a $size ext4 image from a real tree (once; kept in $work)" >&2
  # The tree is cut to 60% of the file system (the end of a tar stream cut
  # short), so that mkfs.ext4 -d fits it whatever SIZE is.
  tree="$work/upload-tree-$size"
  rm -rf "$tree"; mkdir -p "$tree"
  budget=$(( $(numfmt --from=iec "$size") * 6 / 10 ))
  dirs=()
  for d in /usr/share /usr/bin /usr/include /usr/libexec; do [ -d "$d" ] && dirs+=("$d"); done
  { tar -cf - "${dirs[@]}" 2>/dev/null || true; } | head -c "$budget" |
    { tar -xf - -C "$tree" 2>/dev/null || true; }
  fs="$work/fs-$size.img"
  rm -f "$fs"; truncate -s "$size" "$fs"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$tree" "$fs"
  qemu-img convert -O qcow2 "$fs" "$img"
  rm -rf "$fs" "$tree"
fi
# The top-level virtual size (the JSON also lists the file node's, which is
# the file's length).
virtual=$(qemu-img info --output=json "$img" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
[ -n "$virtual" ] || { echo "qemu-img cannot read the virtual size of $img" >&2; exit 1; }
echo "image: $img ($(stat -c %s "$img") bytes, virtual size $virtual bytes)"

drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ] && [ "${BENCH_DROP_CACHES:-1}" = 1 ]; then
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  fi
}

# write_bytes of a shell that ran (and reaped) the measured processes.
written() { awk '/^write_bytes/ {print $2}' "$1"; }

pki="$work/pki"
sh "$here/../shared/servers/mk_certs.sh" "$pki" >/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/client.key" 2>/dev/null
openssl req -new -key "$pki/client.key" -subj "/CN=client.upload-server.cdi.kubevirt.io" \
  -out "$pki/client.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
  > "$pki/client.ext"
openssl x509 -req -in "$pki/client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -sha256 -extfile "$pki/client.ext" -out "$pki/client.crt" 2>/dev/null

# --- diskimport upload-server -------------------------------------------------
root="$work/upload-root"
rm -rf "$root" "$work/server.pid" "$work/server.log"; mkdir -p "$root/data" "$root/dev" "$root/scratch"; : > "$root/dev/termination-log"
drop_caches
env -i PATH="$PATH" TLS_KEY_FILE="$pki/server.key" TLS_CERT_FILE="$pki/server.crt" \
  CLIENT_CERT_FILE="$pki/ca.crt" CLIENT_NAME=client.upload-server.cdi.kubevirt.io \
  UPLOAD_IMAGE_SIZE="$virtual" FILESYSTEM_OVERHEAD=0 LISTEN_ADDRESS=127.0.0.1 LISTEN_PORT=0 \
  bash -c '"$1" upload-server --root "$2" -alsologtostderr -v=1 2>"$3/server.log" & echo $! > "$3/server.pid";
           wait $!; cat /proc/$$/io > "$3/server.io"' \
  _ "$bin" "$root" "$work" &
wrapper=$!
trap 'kill "$(cat "$work/server.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
port=
for _ in $(seq 300); do
  port=$(sed -n 's/.*listening on https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$work/server.log" 2>/dev/null || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "the upload server did not start: $(cat "$work/server.log")"; exit 1; }
curl -s -o "$work/reply" -w '%{http_code} %{time_total}\n' --cacert "$pki/ca.crt" \
  --cert "$pki/client.crt" --key "$pki/client.key" -H 'Content-Type: application/octet-stream' \
  -X POST -T "$img" "https://127.0.0.1:$port/v1beta1/upload" > "$work/curl.out" || true
read -r code upload_time < "$work/curl.out"
if [ "$code" != 200 ]; then
  # A failed upload leaves the server waiting for another one (as CDI's does).
  kill "$(cat "$work/server.pid")" 2>/dev/null || true
  wait "$wrapper" || true
  echo "upload failed: $code $(cat "$work/reply")"; exit 1
fi
wait "$wrapper"
sync
upload_written=$(written "$work/server.io")
echo "diskimport upload-server: ${upload_time} s, $upload_written bytes written, scratch entries: $(ls -A "$root/scratch" | wc -l)"

# --- anchor: scratch copy, then qemu-img convert ---------------------------------
anchor="$work/anchor-root"
rm -rf "$anchor"; mkdir -p "$anchor/data" "$anchor/scratch"
drop_caches
start=$(date +%s.%N)
bash -c 'dd if="$1" of="$2/scratch/tmpimage" bs=1M conv=fsync status=none &&
         qemu-img convert -t writeback -O raw "$2/scratch/tmpimage" "$2/data/disk.img" && sync;
         cat /proc/$$/io > "$3/anchor.io"' _ "$img" "$anchor" "$work"
end=$(date +%s.%N)
anchor_time=$(echo "$end - $start" | bc)
anchor_written=$(written "$work/anchor.io")
echo "scratch + qemu-img convert: ${anchor_time} s, $anchor_written bytes written"

if cmp -s "$root/data/disk.img" "$anchor/data/disk.img"; then
  echo "disks identical"
else
  echo "DISKS DIFFER"; exit 1
fi
echo "ratio (anchor / diskimport): time $(echo "scale=2; $anchor_time / $upload_time" | bc), \
bytes written $(echo "scale=2; $anchor_written / $upload_written" | bc)"
rm -f "$anchor/scratch/tmpimage"
