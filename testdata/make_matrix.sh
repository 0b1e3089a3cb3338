#!/usr/bin/env bash
# Build the qcow2 test matrix used by tests/convert_matrix.rs.
#
#   testdata/make_matrix.sh OUTDIR
#
# Every image is made with qemu-img / qemu-io (plus coreutils, gzip, xz, zstd, bzip2 to
# make raw inputs and wrappers; nothing is installed here). For each input NAME.EXT:
#   NAME.EXT                 the input (EXT = qcow2, img or iso)
#   NAME.EXT.gz/.xz/.zst/.bz2  the same input wrapped (gzip -k, xz -k -T0, zstd -q -k,
#                            bzip2 -k)
#   NAME.raw                 the oracle: qemu-img convert -O raw (raw inputs: a copy)
#   NAME.map.json            qemu-img map --output=json (qcow2 only)
#   NAME.info.json           qemu-img info --output=json (qcow2 only)
# and manifest.txt, one line per input: FAMILY NAME EXT TAGS (TAGS comma separated, "-"
# for none); plus two nested wrappers, conv_v3_64k.qcow2.gz.xz and
# comp_zlib_4k.qcow2.bz2.zst. Tags: nomap = do not compare `info --map` with qemu-img map; spill = the
# tables come after the data, a streaming reader must buffer or spill.
#
# Random data comes from /dev/urandom, so the images differ between runs; the oracle is
# always made from the same run. Sizes are kept small: the matrix builds in seconds.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
for tool in qemu-img qemu-io gzip xz zstd bzip2; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found (install qemu-utils xz-utils zstd gzip bzip2)" >&2; exit 1; }
done

OUT=$1
mkdir -p "$OUT"
cd "$OUT"
mkdir -p work
: > manifest.txt

KiB=1024
MiB=$((1024 * 1024))

# A fresh random file of N bytes; prints its name. Each call gives different bytes, so a
# reader that puts a cluster at the wrong guest offset cannot pass by luck.
# (Called as $(rnd N), i.e. in a subshell: hence mktemp rather than a counter.)
rnd() {
    local f
    f=$(mktemp work/rand.XXXXXX)
    head -c "$1" /dev/urandom > "$f"
    echo "$f"
}

# put_file FILE OFFSET SRC: copy SRC into FILE at byte OFFSET without truncating FILE.
put_file() {
    dd if="$3" of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none
}
put_random() { put_file "$1" "$2" "$(rnd "$3")"; }
# Random but compressible (about 3:4): base64 of random bytes, so that compressed
# clusters also carry bytes that differ everywhere.
rnd_b64() {
    local f
    f=$(mktemp work/b64.XXXXXX)
    head -c "$1" /dev/urandom | base64 -w 0 | head -c "$1" > "$f"
    echo "$f"
}
put_b64() { put_file "$1" "$2" "$(rnd_b64 "$3")"; }
put_byte() { # FILE OFFSET LEN BYTE(octal or hex as printf takes it)
    head -c "$3" /dev/zero | tr '\0' "$4" > work/fill
    put_file "$1" "$2" work/fill
}
put_text() { # FILE OFFSET LEN
    { yes "diskimport test matrix: a compressible line of text $2" || true; } | head -c "$3" > work/text
    put_file "$1" "$2" work/text
}

qio() { # IMAGE COMMAND...: run qemu-io commands on a qcow2 image, quietly
    local img=$1; shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
}

l1_offset() { # IMAGE: the L1 table offset from the header (bytes 40..48, big endian)
    od -An -t x1 -j 40 -N 8 "$1" | tr -d ' \n' | sed 's/^/0x/' | xargs printf '%d\n'
}

add() { # FAMILY NAME EXT TAGS
    echo "$1 $2 $3 ${4:--}" >> manifest.txt
}

# ---------------------------------------------------------------------------------------
# The shared raw source: 32 MiB, about 2 MiB of random bytes, patterns and text in
# runs that start and end at odd places, zeros elsewhere.
SRC=work/src.raw
truncate -s $((32 * MiB)) "$SRC"
put_random "$SRC" 0 1536                               # boot-sector-like start
put_random "$SRC" $((64 * KiB)) $((100 * KiB))          # ends mid-cluster
put_byte "$SRC" $((1 * MiB)) $((4 * KiB)) '\252'        # 0xaa, one 4K block
put_random "$SRC" $((2 * MiB - 2 * KiB)) $((4 * KiB))   # straddles 2 MiB (an L2 boundary at 4K clusters)
put_random "$SRC" $((3 * MiB)) $((1 * MiB))
put_b64 "$SRC" $((4 * MiB + 512)) $((700 * KiB))       # compresses: real compressed clusters
put_text "$SRC" $((5 * MiB)) $((512 * KiB))
put_byte "$SRC" $((8 * MiB + 512)) 512 '\001'           # a single sector
put_byte "$SRC" $((12 * MiB)) $((64 * KiB)) '\377'
put_random "$SRC" $((16 * MiB - 4 * KiB)) $((8 * KiB))
put_b64 "$SRC" $((20 * MiB - 3 * KiB)) $((130 * KiB))
put_random "$SRC" $((32 * MiB - 512 * KiB)) $((256 * KiB))
put_random "$SRC" $((32 * MiB - 512)) 512              # the very last sector

conv() { # NAME FAMILY TAGS OPTIONS...
    local name=$1 family=$2 tags=$3; shift 3
    qemu-img convert -f raw -O qcow2 "$@" "$SRC" "$name.qcow2"
    add "$family" "$name" qcow2 "$tags"
}

# Versions and cluster sizes (qemu-img convert puts each L2 table before its data).
conv conv_v2_64k   convert - -o compat=0.10
conv conv_v2_512   convert - -o compat=0.10,cluster_size=512
conv conv_v3_512   convert - -o cluster_size=512
conv conv_v3_4k    convert - -o cluster_size=4k
conv conv_v3_64k   convert - -o cluster_size=64k
conv conv_v3_2m    convert - -o cluster_size=2M
conv conv_extl2_64k convert - -o extended_l2=on

# Compressed clusters: deflate (zlib) and zstd.
conv comp_zlib_64k  compressed - -c
conv comp_zlib_4k   compressed - -c -o cluster_size=4k
conv comp_zlib_512  compressed - -c -o cluster_size=512
conv comp_zlib_v2   compressed - -c -o compat=0.10
conv comp_zstd_64k  compressed - -c -o compression_type=zstd
conv comp_zstd_4k   compressed - -c -o compression_type=zstd,cluster_size=4k
conv comp_zstd_2m   compressed - -c -o compression_type=zstd,cluster_size=2M

# (qemu stores a "compressed" write uncompressed when it does not shrink: hence the
# base64 data for write -c.)
# Extended L2 (32 subclusters of 2 KiB): sub-cluster writes, a compressed cluster,
# zeroed subclusters inside an allocated cluster.
img=io_extl2.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k "$img" $((24 * MiB))
qio "$img" \
    "write -q -s $(rnd 2048) 0 2k" \
    "write -q -s $(rnd 6144) $((70 * KiB)) 6k" \
    "write -q -P 0x33 $((130 * KiB)) 2k" \
    "write -q -s $(rnd 6144) $((192 * KiB - 2 * KiB)) 6k" \
    "write -q -c -s $(rnd_b64 65536) $((256 * KiB)) 64k" \
    "write -q -s $(rnd 65536) $((320 * KiB)) 64k" \
    "write -q -z $((324 * KiB)) 4k" \
    "write -q -z $((1 * MiB)) 6k" \
    "write -q -s $(rnd $((300 * KiB))) $((5 * MiB + 2 * KiB)) 300k" \
    "write -q -P 0x44 $((24 * MiB - 2 * KiB)) 2k"
add extended_l2 io_extl2 qcow2

img=io_extl2_zstd.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k,compression_type=zstd "$img" $((16 * MiB))
qio "$img" \
    "write -q -s $(rnd 4096) $((4 * KiB)) 4k" \
    "write -q -c -s $(rnd_b64 131072) $((1 * MiB)) 128k" \
    "write -q -c -P 0x5a $((2 * MiB)) 128k" \
    "write -q -s $(rnd 12288) $((3 * MiB + 8 * KiB)) 12k" \
    "write -q -z -u $((3 * MiB + 12 * KiB)) 4k"
add extended_l2 io_extl2_zstd qcow2

# Zero clusters: zero flag with the allocation kept, zero flag unmapped, zero clusters
# over never-written space, a partial-cluster zero write (qemu writes real zeroes).
img=io_zero.qcow2
qemu-img create -q -f qcow2 "$img" $((32 * MiB))
qio "$img" \
    "write -q -s $(rnd $((1 * MiB))) 0 1M" \
    "write -q -z $((256 * KiB)) 128k" \
    "write -q -z -u $((512 * KiB)) 64k" \
    "write -q -z $((700 * KiB)) 4k" \
    "write -q -z $((4 * MiB)) 1M" \
    "write -q -z -u $((8 * MiB)) 2M" \
    "write -q -s $(rnd $((128 * KiB))) $((16 * MiB)) 128k" \
    "write -q -z $((16 * MiB + 64 * KiB)) 64k"
add zero io_zero qcow2

img=io_zero_4k.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k "$img" $((8 * MiB))
qio "$img" \
    "write -q -s $(rnd $((512 * KiB))) 0 512k" \
    "write -q -z $((8 * KiB)) 8k" \
    "write -q -z -u $((100 * KiB)) 12k" \
    "write -q -z $((6 * MiB)) 1M"
add zero io_zero_4k qcow2

# Discarded ranges (v3 and v2): whole clusters become unallocated, partial ones stay.
for compat in 1.1 0.10; do
    name=io_discard_v3
    [[ $compat == 0.10 ]] && name=io_discard_v2
    img=$name.qcow2
    qemu-img create -q -f qcow2 -o compat=$compat "$img" $((16 * MiB))
    qio "$img" \
        "write -q -s $(rnd $((4 * MiB))) 0 4M" \
        "discard -q $((1 * MiB)) 1M" \
        "discard -q $((3 * MiB + 4 * KiB)) 8k" \
        "discard -q $((3 * MiB + 512 * KiB)) 64k" \
        "write -q -P 0x77 $((1 * MiB + 128 * KiB)) 4k" \
        "write -q -P 0x78 $((10 * MiB)) 64k" \
        "discard -q $((10 * MiB)) 64k"
    add discard "$name" qcow2
done

# preallocation=metadata: every cluster mapped to a (hole in the) host cluster. The
# stream carries the whole virtual size, mostly zeros. qemu-img map reports host-file
# holes there, which a stream cannot see: no map comparison.
img=prealloc_meta.qcow2
qemu-img create -q -f qcow2 -o preallocation=metadata "$img" $((16 * MiB))
qio "$img" \
    "write -q -s $(rnd $((256 * KiB))) $((1 * MiB)) 256k" \
    "write -q -P 0x44 $((8 * MiB)) 4k" \
    "write -q -z $((9 * MiB)) 64k"
add preallocation prealloc_meta qcow2 nomap

img=prealloc_meta_4k.qcow2
qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=4k "$img" $((8 * MiB))
qio "$img" "write -q -s $(rnd $((64 * KiB))) $((2 * MiB - 32 * KiB)) 64k"
add preallocation prealloc_meta_4k qcow2 nomap

# Internal snapshot, then overwrites: the active L2 table is copied to the end of the
# file, after (almost) all the data it maps.
# (cp --sparse=never: with holes in the host file qemu-img map suspects metadata
# preallocation and reports the holes as zeroes, which no stream can see.)
cp --sparse=never conv_v3_64k.qcow2 snapshot.qcow2
qemu-img snapshot -c snap1 snapshot.qcow2
qio snapshot.qcow2 \
    "write -q -P 0x71 0 64k" \
    "write -q -s $(rnd $((64 * KiB))) $((3 * MiB + 64 * KiB)) 64k" \
    "write -q -P 0x72 $((20 * MiB)) 64k" \
    "write -q -z $((5 * MiB)) 64k"
add snapshot snapshot qcow2 spill

cp --sparse=never comp_zlib_64k.qcow2 snapshot_zlib.qcow2
qemu-img snapshot -c first snapshot_zlib.qcow2
qio snapshot_zlib.qcow2 "write -q -P 0x73 $((3 * MiB)) 128k"
qemu-img snapshot -c second snapshot_zlib.qcow2
qio snapshot_zlib.qcow2 \
    "write -q -s $(rnd $((64 * KiB))) $((12 * MiB)) 64k" \
    "discard -q $((5 * MiB)) 512k"
add snapshot snapshot_zlib qcow2 spill

# Grown with qemu-img resize: with 4 KiB clusters one L1 entry covers 2 MiB, so growing
# 16 MiB -> 256 MiB makes qemu write a new, larger L1 table at the end of the file.
img=resize.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k "$img" $((16 * MiB))
qio "$img" \
    "write -q -s $(rnd $((512 * KiB))) 0 512k" \
    "write -q -P 0x61 $((15 * MiB)) 1M"
old_l1=$(l1_offset "$img")
qemu-img resize -q "$img" $((256 * MiB))
qio "$img" \
    "write -q -s $(rnd $((256 * KiB))) $((200 * MiB)) 256k" \
    "write -q -P 0x62 $((256 * MiB - 4 * KiB)) 4k" \
    "write -q -P 0x63 $((10 * MiB)) 8k"
new_l1=$(l1_offset "$img")
if (( new_l1 <= old_l1 )); then
    echo "$0: resize.qcow2: expected the L1 table to move towards the end (was $old_l1, now $new_l1)" >&2
    exit 1
fi
add resize resize qcow2 spill

# Empty images: data never written.
qemu-img create -q -f qcow2 empty.qcow2 $((32 * MiB))
add empty empty qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k empty_v2.qcow2 $((8 * MiB))
add empty empty_v2 qcow2

# Virtual size not a multiple of the cluster size (5 MiB + 1536 bytes, 64 KiB clusters),
# written up to the last byte; and the same converted with compression.
img=odd_size.qcow2
qemu-img create -q -f qcow2 "$img" $((5 * MiB + 1536))
qio "$img" \
    "write -q -s $(rnd $((64 * KiB))) 0 64k" \
    "write -q -P 0x66 $((5 * MiB)) 1536" \
    "write -q -s $(rnd 1024) $((5 * MiB - 512)) 1k"
add odd_size odd_size qcow2
qemu-img convert -c -O qcow2 odd_size.qcow2 odd_size_zlib.qcow2
add odd_size odd_size_zlib qcow2

# Raw inputs (format raw / iso): the bytes are the disk.
img=raw_zero_runs.img
truncate -s $((8 * MiB + 512)) "$img"
put_random "$img" 0 4096
put_random "$img" $((1 * MiB + 100)) 5000
put_byte "$img" $((3 * MiB)) $((1 * MiB)) '\021'
put_random "$img" $((8 * MiB)) 512
add raw raw_zero_runs img

img=iso_like.iso
truncate -s $((2 * MiB)) "$img"
put_random "$img" $((16 * 2048 + 2048)) $((64 * KiB))
printf '\001CD001\001' > work/pvd
put_file "$img" $((0x8000)) work/pvd
put_random "$img" $((1 * MiB)) 2048
add raw iso_like iso

# ---------------------------------------------------------------------------------------
# Oracles, qemu's map and info, wrappers.
while read -r family name ext tags; do
    if [[ $ext == qcow2 ]]; then
        qemu-img check -q "$name.qcow2"
        qemu-img convert -f qcow2 -O raw "$name.qcow2" "$name.raw"
        qemu-img map -f qcow2 --output=json "$name.qcow2" > "$name.map.json"
        qemu-img info -f qcow2 --output=json "$name.qcow2" > "$name.info.json"
    else
        cp --sparse=always "$name.$ext" "$name.raw"
    fi
done < manifest.txt

# The wrappers, four compressors at a time.
while read -r family name ext tags; do
    gzip -k -f "$name.$ext" &
    xz -k -f -T0 --block-size=1MiB "$name.$ext" & # several blocks: multi-block decoding
    zstd -q -k -f "$name.$ext" &
    bzip2 -k -f "$name.$ext" &
    wait
done < manifest.txt
# Nested wrappers (peeled outermost first) for two inputs.
gzip -c conv_v3_64k.qcow2 | xz -T0 > conv_v3_64k.qcow2.gz.xz
zstd -q -c comp_zlib_4k.qcow2.bz2 > comp_zlib_4k.qcow2.bz2.zst

rm -rf work
echo "matrix: $(wc -l < manifest.txt) inputs in $OUT"
