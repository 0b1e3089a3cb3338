#!/usr/bin/env bash
# Builds the images tests/upload_server.rs uploads for the formats beyond
# qcow2/raw/ISO: one image per format and sub-format, all holding the same
# 24 MiB disk (random data at odd offsets, a compressible run, zeroes
# elsewhere), made with qemu-img from one raw source, plus an OVA (GNU tar,
# ustar, descriptor first) around the streamOptimized VMDK.
#
#   testdata/make_upload_formats.sh OUTDIR
#
# manifest.txt: one line per image, "LABEL FILE ORACLE", where ORACLE is
# `qemu-img convert -O raw` of the image (with -f vpc for the fixed VHD, whose
# footer qemu-img keeps when it guesses raw; the OVA's is its disk's).
# Sizes are multiples of 4 KiB so that every image fits a 4K-sector device
# exactly (force_size=on keeps qemu's VHD size from CHS rounding).
set -euo pipefail
out=${1:?usage: make_upload_formats.sh OUTDIR}
for tool in qemu-img tar head dd; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out"
cd "$out"
: > manifest.txt

KiB=1024
MiB=$((1024 * KiB))

put_random() { # FILE OFFSET LEN
    head -c "$3" /dev/urandom |
        dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc iflag=fullblock status=none
}
put_text() { # FILE OFFSET LEN: compressible bytes
    { yes "diskimport upload formats: a compressible line" || true; } | head -c "$3" |
        dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc iflag=fullblock status=none
}
oracle() { # IMAGE [FORMAT]: IMAGE.raw, qemu-img's conversion
    qemu-img convert ${2:+-f "$2"} -O raw "$1" "$1.raw"
}
add() { # LABEL FILE ORACLE
    echo "$1 $2 $3" >> manifest.txt
}

src=source.raw
truncate -s $((24 * MiB)) "$src"
put_random "$src" 0 1536
put_random "$src" $((64 * KiB + 512)) $((100 * KiB))
put_random "$src" $((2 * MiB - 2 * KiB)) $((4 * KiB))
put_text "$src" $((5 * MiB)) $((512 * KiB))
put_random "$src" $((9 * MiB)) $((3 * MiB))
put_random "$src" $((24 * MiB - 512)) 512

convert() { # LABEL FILE FORMAT OPTIONS [ORACLE-FORMAT]
    qemu-img convert -f raw -O "$3" ${4:+-o "$4"} "$src" "$2"
    oracle "$2" "${5:-}"
    add "$1" "$2" "$2.raw"
}
convert vmdk-monolithicSparse sparse.vmdk vmdk ""
convert vmdk-streamOptimized stream.vmdk vmdk subformat=streamOptimized
convert vhd-dynamic dynamic.vhd vpc subformat=dynamic,force_size=on
convert vhd-fixed fixed.vhd vpc subformat=fixed,force_size=on vpc
convert vhdx vhdx.vhdx vhdx ""
convert vdi vdi.vdi vdi ""

# The OVA: descriptor first, as ovftool and VirtualBox write it.
mkdir ova
cp stream.vmdk ova/disk1.vmdk
cat > ova/vm.ovf <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="$((24 * MiB))" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
  </VirtualSystem>
</Envelope>
EOF
tar --format=ustar -C ova -cf vm.ova vm.ovf disk1.vmdk
add ova-streamOptimized vm.ova stream.vmdk.raw
rm -rf ova
rm -f "$src"
