#!/usr/bin/env bash
# Build the VDI test matrix used by tests/vdi_matrix.rs.
#
#   testdata/make_vdi_matrix.sh OUTDIR
#
# Every image is made with qemu-img / qemu-io (plus coreutils, gzip, xz, zstd for the
# raw sources and the wrappers). For each input NAME.vdi:
#   NAME.vdi.gz/.xz/.zst   the same input wrapped
#   NAME.raw               the oracle: qemu-img convert -O raw (no -f, as CDI runs it)
#   NAME.map.json          qemu-img map --output=json
#   NAME.info.json         qemu-img info --output=json
# and manifest.txt, one line per input: FAMILY NAME vdi TAGS (TAGS comma separated, "-"
# for none). Tags: nomap = do not compare `info --map` with qemu-img map (static images:
# qemu-img map reports the holes of the host file as zero, which a stream cannot see).
#
# qemu writes VDI with 1 MiB blocks only (it refuses other block sizes when reading), so
# the block size does not vary; sub-formats are dynamic and static (-o static=on).
# Random data comes from /dev/urandom, so images differ between runs; the oracle is always
# made from the same run.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
for tool in qemu-img qemu-io gzip xz zstd; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found (install qemu-utils xz-utils zstd gzip)" >&2; exit 1; }
done

OUT=$1
mkdir -p "$OUT"
cd "$OUT"
mkdir -p work
: > manifest.txt

MiB=$((1024 * 1024))

# put_random FILE OFFSET LEN: LEN random bytes into FILE at OFFSET, not truncating FILE.
put_random() {
    head -c "$3" /dev/urandom |
        dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc iflag=fullblock status=none
}

qio() { # IMAGE COMMAND...: qemu-io commands on a VDI image, quietly
    local img=$1; shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f vdi "${args[@]}" "$img" >/dev/null
}

# finish FAMILY NAME TAGS: oracle, map, info, wrappers, manifest line for NAME.vdi.
finish() {
    local family=$1 name=$2 tags=$3
    qemu-img convert -O raw "$name.vdi" "$name.raw"
    qemu-img map --output=json "$name.vdi" > "$name.map.json"
    qemu-img info --output=json "$name.vdi" > "$name.info.json"
    gzip -k -f "$name.vdi"
    xz -k -f -T0 -1 "$name.vdi"
    zstd -q -k -f "$name.vdi"
    echo "$family $name vdi $tags" >> manifest.txt
}

# dynamic NAME SIZE COMMAND...: a dynamic image written by qemu-io (blocks are
# allocated in write order, so the commands also set the host layout).
dynamic() {
    local name=$1 size=$2; shift 2
    qemu-img create -q -f vdi "$name.vdi" "$size"
    [[ $# -gt 0 ]] && qio "$name.vdi" "$@"
    return 0
}

# from_raw NAME OPTS RAW: qemu-img convert of a raw file (blocks in guest order, zero
# blocks left unallocated; OPTS "static=on" preallocates every block).
from_raw() {
    qemu-img convert -q -f raw -O vdi ${2:+-o "$2"} "$3" "$1.vdi"
}

# --- dynamic: scattered writes, allocation order differing from guest order ---
dynamic dyn_scatter 24M \
    "write -P 0x11 20M 64k" "write -P 0x22 0 512" "write -P 0x33 7M 1536" \
    "write -P 0x44 3M 1M" "write -P 0x55 15872k 1M" "write -P 0x66 23M 1M"
finish dynamic dyn_scatter -

dynamic dyn_reverse 8M \
    "write -P 0x71 7M 4k" "write -P 0x72 5M 4k" "write -P 0x73 3M 4k" "write -P 0x74 1M 4k"
finish dynamic dyn_reverse -

# zero runs: write -z inside and across written blocks, and over never-written ones
dynamic dyn_zero 12M \
    "write -P 0x81 0 3M" "write -z 512k 1M" "write -z 6M 2M" "write -P 0x82 9M 64k" \
    "write -z 9M 4k"
finish zero dyn_zero -

dynamic dyn_empty 16M
finish empty dyn_empty -

# random data through qemu-img convert (random bytes differ everywhere: a block at the
# wrong guest offset cannot pass by luck)
truncate -s 20M work/rand.raw
put_random work/rand.raw 0 300k
put_random work/rand.raw $((5 * MiB + 12345)) 2M
put_random work/rand.raw $((19 * MiB)) 1M
from_raw dyn_random "" work/rand.raw
finish dynamic dyn_random -

# --- static ---
qemu-img create -q -f vdi -o static=on st_scatter.vdi 10M
qio st_scatter.vdi "write -P 0x91 1M 4k" "write -P 0x92 9M 1M" "write -z 1M 512" \
    "write -P 0x93 4097k 8k"
finish static st_scatter nomap

from_raw st_random "static=on" work/rand.raw
finish static st_random nomap

qemu-img create -q -f vdi -o static=on st_empty.vdi 3M
finish static st_empty nomap

# --- larger than 4 GiB, little data (the block map alone is 16 KiB) ---
dynamic big_4200m 4200M \
    "write -P 0xa1 0 64k" "write -P 0xa2 4G 1M" "write -P 0xa3 4097M 512" \
    "write -P 0xa4 4199M 1M"
finish big big_4200m -

# --- odd sizes: not a whole block, smaller than a block, one sector ---
dynamic odd_5m_plus 5245440 "write -P 0xb1 5M 2560" "write -P 0xb2 1M 512"
finish odd_size odd_5m_plus -
dynamic odd_small 1536 "write -P 0xb3 512 512"
finish odd_size odd_small -
dynamic odd_sector 512 "write -P 0xb4 0 512"
finish odd_size odd_sector -
qemu-img create -q -f vdi -o static=on st_odd.vdi 3146240
qio st_odd.vdi "write -P 0xb5 3M 512"
finish odd_size st_odd nomap

rm -rf work
