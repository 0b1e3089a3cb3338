#!/usr/bin/env bash
# Make the bundled example: a 16 MiB ext4 file system holding a few text files, as a
# compressed qcow2 (qemu-img convert -c), wrapped in xz -9.
#
#   testdata/example/make-example.sh      (run from anywhere; writes next to itself)
#
# Writes example-ext4.qcow2.xz and example-ext4.raw.sha256 (sha256 of the raw disk
# that `diskimport convert example-ext4.qcow2.xz OUT` must produce). Needs mkfs.ext4
# (e2fsprogs >= 1.43 for -d), qemu-img, xz, sha256sum. UUID, hash seed and most
# timestamps are fixed, but mkfs.ext4 -d copies each file's ctime, which cannot be set:
# a rerun gives a slightly different disk, so always commit both files together.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/root
mkdir -p "$root/docs" "$root/etc"
cat > "$root/README.txt" <<'TXT'
This disk was made by testdata/example/make-example.sh in the diskimport repository.

It is a 16 MiB ext4 file system, shipped as a compressed qcow2 inside xz:

    cargo run --release -- convert testdata/example/example-ext4.qcow2.xz target/example.raw

turns it back into the raw disk; `debugfs -R 'cat /README.txt' target/example.raw`
(or a loop mount) shows this file again.
TXT
cat > "$root/docs/streaming.txt" <<'TXT'
diskimport reads the image once, front to back: gzip, xz or zstd are peeled off as
the bytes arrive, the qcow2 header, L1 and L2 tables are parsed when they pass, and
every data cluster goes straight to its guest offset in the sparse target file.
TXT
cat > "$root/etc/hostname" <<'TXT'
example
TXT
for i in $(seq 1 200); do
    echo "line $i: the quick brown fox jumps over the lazy dog"
done > "$root/docs/lines.txt"
find "$root" -exec touch -h -d '2025-01-01 00:00:00 UTC' {} +

export E2FSPROGS_FAKE_TIME=1735689600 # 2025-01-01, for the superblock timestamps
truncate -s 16M "$work/example-ext4.raw"
mkfs.ext4 -q -F -L example -U 6f0c2f7e-2b1c-4a3e-9d6e-0d1f2a3b4c5d \
    -E hash_seed=0b5c3d2e-1f4a-4b6c-8d7e-9fa0b1c2d3e4,lazy_itable_init=0,nodiscard \
    -d "$root" "$work/example-ext4.raw" 16M

qemu-img convert -c -f raw -O qcow2 "$work/example-ext4.raw" "$work/example-ext4.qcow2"
xz -9 -c "$work/example-ext4.qcow2" > "$here/example-ext4.qcow2.xz"
(cd "$work" && sha256sum example-ext4.raw) > "$here/example-ext4.raw.sha256"

ls -l "$here/example-ext4.qcow2.xz"
cat "$here/example-ext4.raw.sha256"
