#!/usr/bin/env bash
# Build the VMDK test matrix used by tests/vmdk_matrix.rs.
#
#   testdata/make_vmdk_matrix.sh OUTDIR
#
# Every image is made with qemu-img / qemu-io (plus coreutils, gzip, xz, zstd for raw
# inputs and wrappers). For each image NAME.vmdk:
#   NAME.vmdk.gz/.xz/.zst   the same image wrapped
#   NAME.raw                the oracle: qemu-img convert -O raw (no -f, as CDI runs it)
#   NAME.map.json           qemu-img map --output=json
#   NAME.info.json          qemu-img info --output=json
# and manifest.txt, one line per image: NAME SUBFORMAT (monolithicSparse or
# streamOptimized, as diskimport's info reports it).
#
# qemu-img writes 64 KiB grains only; other grain sizes, VMware's stream layout and COWD
# are built by the test itself from these images. Random data comes from /dev/urandom.
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

KiB=1024
MiB=$((1024 * 1024))
GiB=$((1024 * MiB))

rnd() { # N: a fresh random file of N bytes; prints its name
    local f
    f=$(mktemp work/rand.XXXXXX)
    head -c "$1" /dev/urandom > "$f"
    echo "$f"
}
put_random() { # FILE OFFSET LEN
    dd if="$(rnd "$3")" of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none
}
put_text() { # FILE OFFSET LEN: compressible bytes
    { yes "diskimport vmdk matrix: a compressible line $2" || true; } | head -c "$3" > work/text
    dd if=work/text of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none
}
qio() { # IMAGE COMMAND...: qemu-io commands on a vmdk image, quietly
    local img=$1; shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f vmdk "${args[@]}" "$img" >/dev/null
}
add() { # NAME SUBFORMAT
    echo "$1 $2" >> manifest.txt
}
stream_of() { # SRC NAME: a streamOptimized copy of SRC
    qemu-img convert -O vmdk -o subformat=streamOptimized "$1" "$2.vmdk"
    add "$2" streamOptimized
}

# A raw source: 24 MiB with data that starts and ends at odd places, zeroes elsewhere.
SRC=work/src.raw
truncate -s $((24 * MiB)) "$SRC"
put_random "$SRC" 0 1536
put_random "$SRC" $((64 * KiB)) $((100 * KiB))
put_random "$SRC" $((2 * MiB - 2 * KiB)) $((4 * KiB))
put_text "$SRC" $((5 * MiB)) $((512 * KiB))
put_random "$SRC" $((8 * MiB + 512)) 512
put_random "$SRC" $((16 * MiB - 4 * KiB)) $((8 * KiB))
put_random "$SRC" $((24 * MiB - 512)) 512

# Converted from raw: grains in guest order.
qemu-img convert -f raw -O vmdk "$SRC" conv_sparse.vmdk
add conv_sparse monolithicSparse
stream_of conv_sparse.vmdk conv_stream
qemu-img convert -f raw -O vmdk -o adapter_type=lsilogic,hwversion=6 "$SRC" conv_hw6.vmdk
add conv_hw6 monolithicSparse

# Scattered writes in random order (grains in write order), zero writes, a rewrite.
qemu-img create -q -f vmdk scattered.vmdk 40M
qio scattered.vmdk \
    "write -P 0x11 30M 200k" "write -P 0x22 1M 4k" "write -P 0x33 33M 512" \
    "write -P 0x44 0 64k" "write -z 30M 64k" "write -P 0x55 20M 1M" \
    "write -P 0x66 1M 512" "write -P 0x77 40894k 2k"
add scattered monolithicSparse
stream_of scattered.vmdk scattered_stream

# zeroed_grain=on: `write -z` stores grain table entry 1.
qemu-img create -q -f vmdk -o zeroed_grain=on zeroed.vmdk 16M
qio zeroed.vmdk "write -P 0x99 0 256k" "write -z 64k 128k" "write -z 4M 1M" "write -P 0x98 15M 64k"
add zeroed monolithicSparse

# Larger than 4 GiB with little data: GD past one sector, grains above 4 GiB.
qemu-img create -q -f vmdk big.vmdk 6G
qio big.vmdk "write -P 0xa1 0 64k" "write -P 0xa2 $((4 * GiB + 512 * KiB)) 128k" \
    "write -P 0xa3 $((6 * GiB - 64 * KiB)) 64k"
add big monolithicSparse
stream_of big.vmdk big_stream

# Odd sizes: not a grain multiple (the last grain is partial), and tiny.
truncate -s $((10 * MiB + 1536)) work/odd.raw
put_random work/odd.raw 0 4096
put_random work/odd.raw $((10 * MiB)) 1536
qemu-img convert -f raw -O vmdk work/odd.raw odd_sparse.vmdk
add odd_sparse monolithicSparse
stream_of work/odd.raw odd_stream
qemu-img create -q -f vmdk tiny.vmdk 1536
qio tiny.vmdk "write -P 0xb1 512 512"
add tiny monolithicSparse
stream_of tiny.vmdk tiny_stream

# Empty disks: no grain at all.
qemu-img create -q -f vmdk empty.vmdk 8M
add empty monolithicSparse
stream_of empty.vmdk empty_stream

while read -r name _; do
    qemu-img convert -O raw "$name.vmdk" "$name.raw"
    qemu-img map --output=json "$name.vmdk" > "$name.map.json"
    qemu-img info --output=json "$name.vmdk" > "$name.info.json"
    gzip -k -1 -f "$name.vmdk"
    xz -k -0 -T1 -f "$name.vmdk"
    zstd -q -k -1 -f "$name.vmdk"
done < manifest.txt
rm -rf work
