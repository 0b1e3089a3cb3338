#!/usr/bin/env bash
# Seed corpora for the fuzz targets: small images of every format made with
# qemu-img/qemu-io (a few scattered writes each, so the tables are not empty),
# plus the matching third-party and hostile images from ../shared/corpus when
# it is there. Writes fuzz/corpus/<target>/ (git-ignored). Idempotent.
#   fuzz/make_seeds.sh
set -euo pipefail
cd "$(dirname "$0")"
shared=../../shared/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# make NAME FORMAT SIZE [CREATE-OPTIONS]: an image with three small writes.
make() {
    local name=$1 fmt=$2 size=$3 opts=${4:-}
    qemu-img create -q -f "$fmt" ${opts:+-o "$opts"} "$work/$name" "$size"
    qemu-io -f "$fmt" -c 'write -P 0x5a 0 4k' -c 'write -P 0xa5 64k 8k' \
        -c 'write -z 128k 4k' "$work/$name" >/dev/null 2>&1 ||
        qemu-io -f "$fmt" -c 'write -P 0x5a 0 4k' "$work/$name" >/dev/null
}
# convert NAME FORMAT OPTIONS: a converted copy of a raw image (for sub-formats
# that qemu-io cannot write in place, such as streamOptimized VMDK).
convert() {
    local name=$1 fmt=$2 opts=$3
    qemu-img convert -q -f raw -O "$fmt" ${opts:+-o "$opts"} "$work/seed.raw" "$work/$name"
}
head -c 196608 /dev/zero >"$work/seed.raw"
printf 'diskimport fuzz seed' | dd of="$work/seed.raw" conv=notrunc status=none
printf 'second block' | dd of="$work/seed.raw" bs=1 seek=70000 conv=notrunc status=none

seed() { # seed TARGET FILE...
    local target=$1; shift
    mkdir -p "corpus/$target"
    for f in "$@"; do [[ -f $f ]] && cp -f "$f" "corpus/$target/$(basename "$f")"; done
    return 0
}

make q-512.qcow2 qcow2 256k cluster_size=512
make q-4k.qcow2 qcow2 1M cluster_size=4096
make q-v2.qcow2 qcow2 256k cluster_size=512,compat=0.10
make q-extl2.qcow2 qcow2 1M cluster_size=16384,extended_l2=on
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$work/seed.raw" "$work/q-zlib.qcow2"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd "$work/seed.raw" "$work/q-zstd.qcow2"
seed qcow2_stream "$work"/q-*.qcow2 "$shared"/hostile/*.qcow2

make v-sparse.vmdk vmdk 1M
convert v-stream.vmdk vmdk subformat=streamOptimized
seed vmdk_stream "$work"/v-*.vmdk "$shared"/qemu-sample-images/*.vmdk "$shared"/dfvfs/*.vmdk "$shared"/plaso/*.vmdk

make h-dyn.vhd vpc 1M
make h-fixed.vhd vpc 1M subformat=fixed
seed vhd_stream "$work"/h-*.vhd "$shared"/qemu-sample-images/*.vhd

make d-dyn.vdi vdi 1M
make d-static.vdi vdi 1M static=on
seed vdi_stream "$work"/d-*.vdi

# The VHDX target lays the input out over the header, region table and regions
# itself: its seeds are those structures taken from a real image, in the
# target's order (see fuzz_targets/vhdx_stream.rs).
make x-dyn.vhdx vhdx 8M block_size=1M
python3 - "$work/x-dyn.vhdx" "$work/x-seed" <<'PY'
import sys
img = open(sys.argv[1], 'rb').read()
K, M = 1024, 1024 * 1024
pieces = [(64*K, 80), (128*K, 80), (192*K, 16 + 32*4), (M, 256), (2*M, 256),
          (2*M + 64*K, 64), (3*M, 256), (3*M + 64*K, 64)]
out = bytearray([0])
for at, n in pieces:
    out += img[at:at+n].ljust(n, b'\0')
out += img[4*M:4*M + 16*K]
open(sys.argv[2], 'wb').write(out)
PY
seed vhdx_stream "$work/x-seed"

# OVA: a tar of an OVF descriptor and one disk; the target wraps other inputs itself.
printf '<Envelope><References><File ovf:id="f" ovf:href="d.vmdk"/></References><DiskSection><Disk ovf:fileRef="f"/></DiskSection></Envelope>' >"$work/vm.ovf"
cp "$work/v-stream.vmdk" "$work/d.vmdk"
tar -C "$work" -cf "$work/o-one.ova" vm.ovf d.vmdk
seed ova_stream "$work/o-one.ova" "$work/v-stream.vmdk" "$work/q-4k.qcow2"

# Compression wrappers around small images, and the corpus's own.
for c in gzip xz zstd bzip2; do
    "$c" -c "$work/q-4k.qcow2" >"$work/s-q.qcow2.$c"
done
seed sniff_decode "$work"/s-* "$shared"/dfvfs/syslog.* "$shared"/qemu-sample-images/*.bz2
for t in corpus/*; do echo "$t: $(ls "$t" | wc -l) seeds"; done
