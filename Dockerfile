# syntax=docker/dockerfile:1
# relayd: multi-stage build. Dependencies compile in their own layer, so a change to
# relayd's code rebuilds only relayd.

FROM rust:1.95-slim-bookworm AS build
# OpenSSL: the AMQP client (amqps) and the HTTP client (https destinations) link it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: the real manifest and lock file with skeleton sources.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src tests/it migrations examples \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > examples/receiver.rs \
 && touch src/lib.rs tests/it/main.rs \
 && cargo build --release --locked --bin relayd --example receiver \
 && rm -rf src tests examples

# The real sources; touch so cargo sees them as newer than the skeleton's artifacts.
COPY src src
COPY migrations migrations
COPY examples examples
RUN touch src/main.rs src/lib.rs examples/receiver.rs \
 && cargo build --release --locked --bin relayd --example receiver

FROM debian:bookworm-slim AS runtime
# Only what the binaries need: CA roots (TLS to destinations and amqps) and libssl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin relayd
COPY --from=build /src/target/release/relayd /usr/local/bin/relayd
# The example downstream service, for the compose demo (`--entrypoint relayd-example-receiver`).
COPY --from=build /src/target/release/examples/receiver /usr/local/bin/relayd-example-receiver
# The image's own configuration: every URL and secret from the environment (the file
# lists them), listeners on all interfaces. Mount another file here, or set
# RELAYD_CONFIG, for your sources and destinations.
COPY deploy/image/relayd.toml /etc/relayd/relayd.toml
ENV RELAYD_CONFIG=/etc/relayd/relayd.toml
USER 10001:10001
EXPOSE 3000 9090
# Alive: the ops listener answers /healthz (the image has no curl).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["relayd", "health"]
ENTRYPOINT ["relayd"]
CMD ["--role", "all"]
