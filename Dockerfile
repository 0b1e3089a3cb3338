# The diskimport importer image: a drop-in for CDI's IMPORTER_IMAGE.
#
# One static binary plays every program CDI runs from this image:
#   /usr/bin/cdi-importer               the importer (ENTRYPOINT)
#   /usr/bin/cdi-containerimage-server  node-pull sidecar, copied to /shared/server
#   /usr/bin/cdi-image-size-detection   PVC-clone size detection
#   /usr/bin/cdi-source-update-poller   DataImportCron registry poller
# (links to cdi-importer; the binary dispatches on the name it runs as), plus
# a static busybox for the `sh -c 'cp …'` of CDI's init container and a CA
# bundle. See image/make-rootfs.sh for the layout; image/Dockerfile.host
# builds the same image from a binary built on the host.

# Build stage: Debian 12's Rust image. glibc is linked statically
# (.cargo/config.toml: crt-static), so the binary runs with no libc at all.
FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang busybox-static ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
COPY image/make-rootfs.sh ./image/make-rootfs.sh
RUN cargo build --release --locked --bin diskimport \
 && strip target/release/diskimport \
 && ldd target/release/diskimport 2>&1 | grep -q "not a dynamic executable" \
 && image/make-rootfs.sh target/release/diskimport /bin/busybox \
        /etc/ssl/certs/ca-certificates.crt /rootfs

# Runtime: nothing but the root file system above. No /scratch directory (CDI
# mounts a scratch volume when it wants one).
FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/bin:/bin
# Numeric and non-root: the poller's pod keeps runAsNonRoot but clears
# runAsUser, so kubelet needs a numeric USER; import pods run as 107.
USER 107:107
EXPOSE 8443
# CDI starts the importer as `<entrypoint> -alsologtostderr` with pod args
# `-v=N`.
ENTRYPOINT ["/usr/bin/cdi-importer", "-alsologtostderr"]
