# The diskimport importer image: a drop-in for CDI's importer entrypoint.
#
# Build stage: a Debian 12 (bookworm) Rust toolchain builds the release binary.
# The xz and zstd libraries are compiled in, so the binary needs only glibc and
# libgcc_s at run time (checked with ldd: libgcc_s, libm, libc, ld-linux).
FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin diskimport \
 && strip target/release/diskimport

# Runtime stage: distroless with glibc and libgcc, no shell, no package
# manager, and no /scratch directory (CDI's Go importer mistook a /scratch
# directory in the image for a scratch volume; diskimport only uses /scratch
# when the volume is mounted, but the image ships none either way).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/diskimport /usr/bin/diskimport
# CDI forces uid 107 in the pod; the image runs as it too.
USER 107:107
EXPOSE 8443
# CDI starts the importer as `<entrypoint> -alsologtostderr` with pod args
# `-v=N`; diskimport accepts both and runs `import` when no subcommand is given.
ENTRYPOINT ["/usr/bin/diskimport", "-alsologtostderr"]
