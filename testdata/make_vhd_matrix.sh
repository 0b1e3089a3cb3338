#!/usr/bin/env bash
# Builds the VHD test matrix into $1 (made empty first) with qemu-img and qemu-io:
# dynamic and fixed disks, scattered and zero writes, blocks allocated out of guest
# order, an image above 4 GiB with little data, odd sizes, force_size (creator
# "qem2"), and footers patched to other creator applications ("vpc ", "win ",
# "d2v ", "qem2", unknown) so that each of qemu's size rules is exercised. Every
# image also comes gzip-, xz- and zstd-wrapped.
#
# manifest.txt: one line per image, "NAME KIND" where KIND is dynamic (oracle
# `qemu-img convert -O raw`, no -f, as CDI runs it) or fixed (oracle
# `qemu-img convert -f vpc -O raw`: the footer is dropped). NAME.raw is the oracle,
# NAME.map.json `qemu-img map --output=json` (dynamic only).
set -euo pipefail
out=${1:?usage: make_vhd_matrix.sh DIR}
rm -rf "$out"
mkdir -p "$out"
cd "$out"

io() { qemu-io -f vpc "$@" >/dev/null; }

# Rewrites the creator, current size or geometry of the footer(s) of a VHD and
# fixes the checksum: patch FILE end|both creator=XXXX cur=N chs=C/H/S
patch_footer() {
    python3 - "$@" <<'PY'
import struct, sys
path, where, *fields = sys.argv[1:]
data = bytearray(open(path, 'rb').read())
spots = [len(data) - 512] + ([0] if where == 'both' else [])
for at in spots:
    f = data[at:at + 512]
    for kv in fields:
        k, v = kv.split('=', 1)
        if k == 'creator':
            f[28:32] = v.replace('_', ' ').encode().ljust(4, b'\0')[:4]
        elif k == 'cur':
            f[48:56] = struct.pack('>Q', int(v))
        elif k == 'chs':
            c, h, s = map(int, v.split('/'))
            f[56:60] = struct.pack('>HBB', c, h, s)
    f[64:68] = b'\0\0\0\0'
    f[64:68] = struct.pack('>I', ~sum(f) & 0xffffffff)
    data[at:at + 512] = f
open(path, 'wb').write(data)
PY
}

add() { echo "$1 $2" >> manifest.txt; }

# Dynamic, scattered writes and zero runs, allocated out of guest order.
qemu-img create -q -f vpc dyn-scattered.vhd 64M
io -c 'write -P 0x5a 40M 3M' -c 'write -P 0x11 0 64k' -c 'write -P 0x22 5M 1536k' \
   -c 'write -z 40M 1M' -c 'write -P 0x33 63M 512' -c 'write -z 5M 512k' dyn-scattered.vhd
add dyn-scattered dynamic

# Odd size (qemu rounds up to a CHS size), data in the last partial block.
qemu-img create -q -f vpc dyn-odd.vhd 33333333
io -c 'write -P 0x44 31M 512k' -c 'write -P 0x45 1000 3000' dyn-odd.vhd
add dyn-odd dynamic

# Converted from raw: blocks in guest order, only non-zero blocks.
qemu-img create -q -f raw src.raw 24M
qemu-io -f raw -c 'write -P 0x61 1M 2M' -c 'write -P 0x62 9M 100k' -c 'write -P 0x63 20M 4M' src.raw >/dev/null
qemu-img convert -f raw -O vpc src.raw dyn-converted.vhd
add dyn-converted dynamic

# force_size: creator "qem2", exact size, maximum geometry.
qemu-img create -q -f vpc -o force_size=on dyn-force.vhd 100M
io -c 'write -P 0x71 99M 1M' -c 'write -P 0x72 0 4k' dyn-force.vhd
add dyn-force dynamic

# Empty.
qemu-img create -q -f vpc dyn-empty.vhd 10M
add dyn-empty dynamic

# Larger than 4 GiB, little data.
qemu-img create -q -f vpc dyn-big.vhd 5G
io -c 'write -P 0x81 0 4k' -c 'write -P 0x82 4100M 1M' -c 'write -P 0x83 5000M 64k' dyn-big.vhd
add dyn-big dynamic

# Creator applications: the same image with the footers patched; current size
# 60000000 (not a CHS size, not a sector multiple) against CHS 67125248.
for creator in vpc_ qemu win_ d2v_ d2v qem2 abcd; do
    name=dyn-creator-${creator//_/-sp}
    cp dyn-scattered.vhd "$name.vhd"
    patch_footer "$name.vhd" both "creator=$creator" cur=60000000
    add "$name" dynamic
done
# "vpc " with the maximum geometry: current size.
cp dyn-scattered.vhd dyn-creator-vpc-maxchs.vhd
patch_footer dyn-creator-vpc-maxchs.vhd both creator=vpc_ chs=65535/16/255 cur=50000000
add dyn-creator-vpc-maxchs dynamic

# Sector bitmaps with clear bits over data (a VHD tool that tracks sectors):
# qemu reads an allocated block whole whatever its bitmap says.
qemu-img create -q -f vpc dyn-bitmap-clear.vhd 16M
io -c 'write -P 0x66 0 3M' -c 'write -P 0x67 9M 64k' dyn-bitmap-clear.vhd
python3 - dyn-bitmap-clear.vhd <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], 'rb').read())
header = struct.unpack('>Q', data[16:24])[0]
bat = struct.unpack('>Q', data[header + 16:header + 24])[0]
for index in (0, 1, 4):
    entry = struct.unpack('>I', data[bat + 4 * index:bat + 4 * index + 4])[0]
    if entry != 0xFFFFFFFF:
        at = entry * 512
        data[at:at + 512] = bytes([0x00, 0x0F, 0xF0]) * 170 + b'\0\0'
open(sys.argv[1], 'wb').write(data)
PY
add dyn-bitmap-clear dynamic

# Fixed: raw data plus the footer.
qemu-img create -q -f vpc -o subformat=fixed fixed-scattered.vhd 20M
io -c 'write -P 0x91 0 1M' -c 'write -P 0x92 7M 33k' -c 'write -P 0x93 19M 1M' fixed-scattered.vhd
add fixed-scattered fixed
qemu-img create -q -f vpc -o subformat=fixed,force_size=on fixed-force.vhd 16M
io -c 'write -P 0xa1 15M 1M' fixed-force.vhd
add fixed-force fixed
qemu-img create -q -f vpc -o subformat=fixed fixed-odd.vhd 5555555
io -c 'write -P 0xa2 1234 5000' fixed-odd.vhd
add fixed-odd fixed
# Hyper-V style: creator "win ", geometry smaller than the data, current size = data.
cp fixed-scattered.vhd fixed-creator-win.vhd
patch_footer fixed-creator-win.vhd end creator=win_ chs=500/4/17
add fixed-creator-win fixed

rm -f src.raw
while read -r name kind; do
    if [ "$kind" = fixed ]; then
        qemu-img convert -f vpc -O raw "$name.vhd" "$name.raw"
    else
        qemu-img convert -O raw "$name.vhd" "$name.raw"
        qemu-img map --output=json "$name.vhd" > "$name.map.json"
    fi
    gzip -1 -c "$name.vhd" > "$name.vhd.gz"
    xz -0 -T1 -c "$name.vhd" > "$name.vhd.xz"
    zstd -q -1 -c "$name.vhd" > "$name.vhd.zst"
done < manifest.txt
