# Multi-stage build: compile with the Rust toolchain, run on a small distroless image as non-root.
# (Docker cannot build on the development machines of this project; the file is kept standard.)
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tenant-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/tenant-gateway /usr/local/bin/tenant-gateway
COPY config ./config
USER nonroot:nonroot
# https, http, admin (admin binds loopback by default: publish it only if you rebind it)
EXPOSE 8443 8080 9901
ENTRYPOINT ["/usr/local/bin/tenant-gateway"]
CMD ["run", "--config", "/app/config/gateway.yaml"]
