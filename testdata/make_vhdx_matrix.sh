#!/usr/bin/env bash
# Build the VHDX test matrix used by tests/vhdx_matrix.rs.
#
#   testdata/make_vhdx_matrix.sh OUTDIR
#
# Every image is made with qemu-img / qemu-io (plus coreutils, gzip, xz, zstd). For each
# image NAME:
#   NAME.vhdx                 the image
#   NAME.vhdx.gz/.xz/.zst     the same image wrapped (gzip -k, xz -k -T0, zstd -q -k)
#   NAME.raw                  the oracle: qemu-img convert -O raw (no -f, as CDI runs it)
#   NAME.map.json             qemu-img map --output=json
# and manifest.txt, one line per image: NAME TAGS (comma separated, "-" for none). Tags:
# fixed = made with subformat=fixed; big = larger than 4 GiB; k4 = the test also makes
# a 4096-byte-sector twin of it (its virtual size is a multiple of 4096).
#
# Random data comes from /dev/urandom, so the images differ between runs; the oracle is
# always made from the same run. Images are small (sparse where they are large).
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

# A fresh random file of N bytes; prints its name.
rnd() {
    local f
    f=$(mktemp work/rand.XXXXXX)
    head -c "$1" /dev/urandom > "$f"
    echo "$f"
}

# io IMAGE CMD...: qemu-io commands on an image (output dropped).
io() {
    local img=$1
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f vhdx "${args[@]}" "$img" > /dev/null
}

# Random writes at the given offsets: "OFF:LEN" pairs (bytes), each its own pattern
# file so that a block at the wrong guest offset cannot pass by luck.
scatter() {
    local img=$1
    shift
    local spec off len src
    for spec in "$@"; do
        off=${spec%%:*}
        len=${spec##*:}
        src=$(rnd "$len")
        qemu-io -f vhdx -c "write -s $src $off $len" "$img" > /dev/null
    done
}

# finish NAME TAGS: wrappers, oracle, map, manifest line.
finish() {
    local name=$1 tags=$2
    qemu-img convert -O raw "$name.vhdx" "$name.raw"
    qemu-img map --output=json "$name.vhdx" > "$name.map.json"
    gzip -k -f "$name.vhdx"
    xz -k -f -T0 -1 "$name.vhdx"
    zstd -q -k -f "$name.vhdx"
    echo "$name $tags" >> manifest.txt
}

# Every block size qemu makes, 1 to 256 MiB: scattered writes (one straddling a block
# boundary), a zero run written with -z, and a write to the last block.
for bs in 1 2 4 8 16 32 64 128 256; do
    name=dyn_${bs}m
    # Three blocks for small sizes, two (the second partial) from 32 MiB up.
    if (( bs < 32 )); then size=$(( (bs * 2 + 3) * MiB )); else size=$(( (bs + 3) * MiB )); fi
    qemu-img create -q -f vhdx -o block_size=${bs}M "$name.vhdx" "$size"
    scatter "$name.vhdx" "$((bs * MiB - 4096)):8192" "0:512" "$((size - 65536)):65536"
    io "$name.vhdx" "write -z $((bs * MiB + 8192)) 65536" "write -P 0x5a $((bs * MiB + 131072)) 4096"
    finish "$name" k4
done

# Blocks allocated out of guest order (the last first), many small writes.
name=dyn_reverse_order
qemu-img create -q -f vhdx -o block_size=1M "$name.vhdx" 24M
scatter "$name.vhdx" $(for i in 23 17 11 5 0 9 3; do echo "$((i * MiB + i * 4096)):12288"; done)
finish "$name" k4

# Unwritten blocks NOT_PRESENT (state 0) instead of ZERO.
name=dyn_state_zero_off
qemu-img create -q -f vhdx -o block_size=2M,block_state_zero=off "$name.vhdx" 12M
scatter "$name.vhdx" "$((5 * MiB)):4096" "$((11 * MiB)):1048576"
finish "$name" k4

# A 4 MiB log: BAT and metadata move up, data starts later.
name=dyn_log_4m
qemu-img create -q -f vhdx -o block_size=1M,log_size=4M "$name.vhdx" 8M
scatter "$name.vhdx" "$((3 * MiB)):65536"
finish "$name" k4

# Fixed: every block preallocated (and written ones appended by qemu-io).
name=fixed_1m
qemu-img create -q -f vhdx -o subformat=fixed,block_size=1M "$name.vhdx" 6M
scatter "$name.vhdx" "$((2 * MiB)):65536" "0:4096"
finish "$name" fixed,k4

# Fixed, converted from raw data: every block present in guest order.
name=fixed_from_raw
head -c $((3 * MiB)) /dev/urandom > work/src.raw
truncate -s $((8 * MiB)) work/src.raw
dd if=/dev/urandom of=work/src.raw bs=64K seek=100 count=3 conv=notrunc status=none
qemu-img convert -q -O vhdx -o subformat=fixed,block_size=2M work/src.raw "$name.vhdx"
finish "$name" fixed,k4

# Dynamic, converted from the same raw: zero blocks are left unallocated.
name=dyn_from_raw
qemu-img convert -q -O vhdx -o block_size=1M work/src.raw "$name.vhdx"
finish "$name" k4

# Larger than 4 GiB with little data (and more than 4096 blocks of 1 MiB, so the
# BAT holds a sector-bitmap entry between payload entries).
name=big_4160m
qemu-img create -q -f vhdx -o block_size=1M "$name.vhdx" 4160M
scatter "$name.vhdx" "0:4096" "$((4095 * MiB)):2097152" "$((4128 * MiB + 12345 * 512)):65536" "$((4160 * MiB - 4096)):4096"
finish "$name" big,k4

# Odd virtual size (qemu rounds it up to 512): the last block is partial.
name=odd_size
qemu-img create -q -f vhdx -o block_size=1M "$name.vhdx" 7654321
scatter "$name.vhdx" "$((7654321 / 512 * 512 - 4096)):4096" "$((2 * MiB)):1024"
finish "$name" -

# Empty images.
name=empty_8m
qemu-img create -q -f vhdx "$name.vhdx" 8M
finish "$name" k4

rm -rf work
