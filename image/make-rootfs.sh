#!/bin/sh
# Lays out the importer image's root file system in OUT (used by both the
# multi-stage Dockerfile and Dockerfile.host):
#   make-rootfs.sh BINARY BUSYBOX CA_BUNDLE OUT
# BINARY is the static diskimport binary, BUSYBOX a static busybox (Debian's
# busybox-static), CA_BUNDLE a PEM bundle of trusted roots.
#
# /usr/bin/cdi-importer is the binary; every other program CDI runs from the
# image is a symbolic link to it (the binary dispatches on the name it is
# started as; `cp` follows the link when CDI's init container copies the
# server). busybox provides `sh` and `cp` for that init container. The CA
# bundle sits at CDI's path and at Debian's. No /scratch (CDI mounts one when
# it wants one); a world-writable /tmp as in CDI's image.
set -eu
[ $# -eq 4 ] || { echo "usage: $0 BINARY BUSYBOX CA_BUNDLE OUT" >&2; exit 2; }
bin=$1 busybox=$2 ca=$3 out=$4
mkdir -p "$out/usr/bin" "$out/bin" "$out/etc/pki/ca-trust/extracted/pem" "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
install -m 0755 "$bin" "$out/usr/bin/cdi-importer"
for name in cdi-containerimage-server cdi-image-size-detection cdi-source-update-poller diskimport; do
    ln -sf cdi-importer "$out/usr/bin/$name"
done
install -m 0755 "$busybox" "$out/bin/busybox"
for applet in sh cp ls cat; do
    ln -sf busybox "$out/bin/$applet"
done
install -m 0644 "$ca" "$out/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
ln -sf ../../pki/ca-trust/extracted/pem/tls-ca-bundle.pem "$out/etc/ssl/certs/ca-certificates.crt"
