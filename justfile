# relayd tasks. `just --list` shows them.

# Run relayd with every role on the shipped config.
run *ARGS:
    cargo run -- --role all {{ARGS}}

# Apply the embedded migrations (creates the database if needed).
migrate:
    cargo run -- migrate

# The whole test suite (needs PostgreSQL and RabbitMQ on localhost; installs the
# browser, Prometheus, Python and Node it runs when they are missing).
test *ARGS:
    cargo test {{ARGS}}

# The standard benchmark set (about eleven minutes; needs PostgreSQL and RabbitMQ): writes
# docs/bench/results.md, results.json and latency.svg.
bench *ARGS:
    cargo build --release --bins
    target/release/relayd-bench --out docs/bench {{ARGS}}

# Build the container image from the real Dockerfile without Docker (buildah; base
# images made from Debian packages once). Needs root, buildah, podman, debootstrap.
image TAG="relayd:local":
    deploy/image/build-local.sh {{TAG}}

# Build the image, then run it against the local PostgreSQL and RabbitMQ (migrate, serve,
# health check, one delivered event, SIGTERM → exit 0), as CI does.
image-check TAG="relayd:local": (image TAG)
    deploy/image/smoke-test.sh {{TAG}}

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run
