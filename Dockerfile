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
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin relayd
COPY --from=build /src/target/release/relayd /usr/local/bin/relayd
# The example downstream service, for the compose demo (`--entrypoint relayd-example-receiver`).
COPY --from=build /src/target/release/examples/receiver /usr/local/bin/relayd-example-receiver
COPY config/relayd.toml /etc/relayd/relayd.toml
# The shipped config, overridable by mounting another file here or by RELAYD__… variables.
# In a container the ops port must be reachable by probes and scrapers.
ENV RELAYD_CONFIG=/etc/relayd/relayd.toml \
    RELAYD__OPS__LISTEN=0.0.0.0:9090
USER 10001:10001
EXPOSE 3000 9090
ENTRYPOINT ["relayd"]
CMD ["--role", "all"]
