# syntax=docker/dockerfile:1
# relayd: multi-stage build. The first stage compiles dependencies in their own layer,
# so a change to relayd's code rebuilds only relayd.

FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: a skeleton crate with the real manifest and lock file.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src tests/it migrations \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/it/main.rs \
 && cargo build --release --locked \
 && rm -rf src tests

# The real sources; touch so cargo sees them as newer than the skeleton's artifacts.
COPY src src
COPY migrations migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked

FROM debian:bookworm-slim AS runtime
# Only what the binary needs: CA roots (TLS to destinations and amqps) and libssl
# (the TLS library the AMQP client links).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin relayd
COPY --from=build /src/target/release/relayd /usr/local/bin/relayd
COPY config/relayd.toml /etc/relayd/relayd.toml
# The shipped config, overridable by mounting another file here or by RELAYD__… variables.
# In a container the ops port must be reachable by probes and scrapers.
ENV RELAYD_CONFIG=/etc/relayd/relayd.toml \
    RELAYD__OPS__LISTEN=0.0.0.0:9090
USER 10001:10001
EXPOSE 3000 9090
ENTRYPOINT ["relayd"]
CMD ["--role", "all"]
