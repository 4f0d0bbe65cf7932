# Multi-stage build: compile with the Rust toolchain, run on a small distroless image as non-root.
#
#   docker build -t tenant-gateway .
#   docker run --rm tenant-gateway                       # default command: the demo (see below)
#   docker run --rm -p 8443:8443 -p 8080:8080 \
#     -v "$PWD/config:/app/config:ro" -v "$PWD/certs:/app/certs:ro" \
#     tenant-gateway run --config /app/config/gateway.yaml
#
# Paths in the config are relative to /app (the working directory): `certs/acme.crt` is
# /app/certs/acme.crt, so mounting your certificates and secret files at /app/certs is enough
# for config/gateway.yaml. docs/operations.md has the details.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
# The whole workspace: the gateway, its signing crate (a path dependency) and the middleware
# crate (a workspace member; cargo refuses a workspace with a member missing).
COPY Cargo.toml Cargo.lock LICENSE ./
COPY src ./src
COPY benches ./benches
COPY signing ./signing
COPY middleware/rust ./middleware/rust
RUN cargo build --release --locked --bin tenant-gateway
# An empty certs/ the non-root user may write to: the demo makes its throwaway certificates there.
RUN mkdir -p /out/certs

FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/tenant-gateway /usr/local/bin/tenant-gateway
COPY config ./config
COPY --from=build --chown=nonroot:nonroot /out/certs ./certs
USER nonroot:nonroot
# https, http, admin (admin binds loopback by default: publish it only if you rebind it)
EXPOSE 8443 8080 9901
ENTRYPOINT ["/usr/local/bin/tenant-gateway"]
# The demo starts with nothing mounted: echo upstreams, throwaway certificates in /app/certs,
# config/demo.yaml (listeners on the container's loopback; on Linux `--network host` reaches them).
# For a real deployment pass `run --config ...` with the config and certificates mounted.
CMD ["demo"]
