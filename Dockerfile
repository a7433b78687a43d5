# syntax=docker/dockerfile:1
# Cortex container image. See deploy/README.md ("Container image").
#
#   docker build -t cortex:0.1.0 .
#   docker run --rm -p 127.0.0.1:8084:8084 -v cortex-data:/var/lib/cortex cortex:0.1.0
#
# Build on Debian 12 and run on distroless Debian 12, so the binary links against the same
# glibc it runs with. The runtime image has no shell and no package manager, and runs as
# uid/gid 65532 ("nonroot"). Pin both images by digest in production builds.

# The workspace's rust-version (1.89) is the floor its locked dependencies set; the test suite
# runs on 1.95.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target directory between builds; the binary is copied
# out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cortex-cli \
 && install -D -m 0755 target/release/cortex /out/usr/local/bin/cortex \
 && install -d -m 0700 /out/var/lib/cortex

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="cortex" \
      org.opencontainers.image.description="Cortex: a security-first, self-hosted AI gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/usr/local/bin/cortex /usr/local/bin/cortex
# The data directory (SQLite, generated master key, exports) belongs to the runtime user.
COPY --from=build --chown=65532:65532 /out/var/lib/cortex /var/lib/cortex
# Cortex listens on loopback unless told otherwise; in a container that would be unreachable.
ENV CORTEX_LISTEN=0.0.0.0:8084 \
    CORTEX_DATA_DIR=/var/lib/cortex
WORKDIR /var/lib/cortex
USER 65532:65532
EXPOSE 8084
# No HEALTHCHECK: the image has no HTTP client; orchestrators probe /healthz and /readyz.
ENTRYPOINT ["/usr/local/bin/cortex"]
CMD ["serve"]
