#!/usr/bin/env bash
# Runs the image deploy/image/build-local.sh built the way its users run it, against
# this machine's PostgreSQL and RabbitMQ: the image's own `relayd migrate`, then its
# entrypoint and command (`relayd --role all`) as its user with its default
# configuration; its health check; a signed event posted from the host and delivered
# to a receiver on the host (the example receiver, which verifies the signature); then
# SIGTERM, which must end relayd with exit 0. Checks that the image holds no compiler and
# no source tree, and prints its size.
#
#   deploy/image/smoke-test.sh [TAG]         default TAG: relayd:local
#
# Containers run with buildah's chroot isolation on the host's network (the sandbox
# here forbids what `podman run` sets up), so the services are on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=${1:-relayd:local}
export BUILDAH_ISOLATION=chroot
work=$(mktemp -d)
ctr=""
receiver_pid=""
cleanup() {
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null || true
  pkill -TERM -u 10001 -x relayd 2>/dev/null || true
  [ -n "$ctr" ] && buildah umount "$ctr" >/dev/null 2>&1 || true
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke-test: FAILED: $*" >&2; exit 1; }
step() { printf -- '--> %s\n' "$*"; }
# A field of the image's (Docker-format) config, as JSON.
config() {
  buildah inspect --type image "$tag" | python3 -c \
    'import json,sys; print(json.dumps((json.load(sys.stdin)["Docker"].get("config") or {}).get(sys.argv[1])))' "$1"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "the image: size, user, entrypoint, no compiler, no sources"
size=$(podman image inspect --format '{{.Size}}' "$tag")
user=$(config User | tr -d '"')
mapfile -t entrypoint < <(config Entrypoint | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin) or []))')
mapfile -t command < <(config Cmd | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin) or []))')
[ "$user" = "10001:10001" ] || fail "the image runs as ${user:-root}, not 10001:10001"
[ "${entrypoint[*]}" = "relayd" ] || fail "entrypoint is '${entrypoint[*]}'"
ctr=$(buildah from --pull=never "$tag")
root=$(buildah mount "$ctr")
found=""
for tool in cc gcc g++ ld rustc cargo make; do
  for dir in usr/bin usr/local/bin bin usr/local/rust/bin usr/local/cargo/bin; do
    [ -e "$root/$dir/$tool" ] && found="$found /$dir/$tool"
  done
done
[ -z "$found" ] || fail "the image holds build tools:$found"
sources=$(find "$root" -xdev \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -print -quit)
[ -z "$sources" ] || fail "the image holds a source tree: ${sources#"$root"}"
[ ! -e "$root/src" ] || fail "the image holds /src"
echo "image $tag: $(( size / 1000000 )) MB, user $user, entrypoint ${entrypoint[*]} ${command[*]}, no compiler, no sources"

# What the image's configuration reads from the environment, pointed at this machine.
ingest_port=$(free_port)
ops_port=$(free_port)
receiver_port=$(free_port)
database=relayd_image_smoke
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $database" >/dev/null
secret_stripe="whsec_image_smoke_$(date +%s)"
env_args=(
  RELAYD_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
  RELAYD_BROKER_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
  RELAYD__BROKER__PREFIX="image-smoke-$$"
  RELAYD_ADMIN_TOKEN="image-smoke-admin-token-0123456789"
  STRIPE_WEBHOOK_SECRET="$secret_stripe"
  RELAYD_DESTINATION_URL="http://127.0.0.1:$receiver_port/hooks"
  RELAYD_DESTINATION_SIGNING_SECRET="whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
  RELAYD__INGEST__LISTEN="0.0.0.0:$ingest_port"
  RELAYD__OPS__LISTEN="0.0.0.0:$ops_port"
)
run_in_image() {
  local flags=()
  for kv in "${env_args[@]}"; do flags+=(--env "$kv"); done
  buildah run --isolation chroot --network host --user "$user" "${flags[@]}" "$ctr" -- "$@"
}

step "the receiver on the host (examples/receiver.rs, verifying signatures)"
# Built on the host, with relayd's CLI that posts the test event from outside.
cargo build --quiet --bin relayd --example receiver
EXAMPLE_SIGNING_SECRET="whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=" \
  target/debug/examples/receiver "127.0.0.1:$receiver_port" >"$work/receiver.log" 2>&1 &
receiver_pid=$!

step "relayd migrate, in the image"
run_in_image "${entrypoint[@]}" migrate

step "relayd ${command[*]}, in the image, as $user"
run_in_image "${entrypoint[@]}" "${command[@]}" >"$work/relayd.log" 2>&1 &
relayd_job=$!
for _ in $(seq 60); do
  grep -q '"relayd started"' "$work/relayd.log" && break
  kill -0 "$relayd_job" 2>/dev/null || { cat "$work/relayd.log" >&2; fail "relayd exited at startup"; }
  sleep 0.5
done
grep -q '"relayd started"' "$work/relayd.log" || { cat "$work/relayd.log" >&2; fail "relayd did not start"; }
pid=$(pgrep -u 10001 -x relayd | head -1)
[ -n "$pid" ] || fail "no relayd process of uid 10001"
echo "relayd runs as uid $(ps -o uid= -p "$pid" | tr -d ' ') (pid $pid)"

step "the image's health check"
# HEALTHCHECK lives in the Docker image format (build-local.sh builds that format).
mapfile -t health_cmd < <(config Healthcheck \
  | python3 -c 'import json,sys; t=(json.load(sys.stdin) or {}).get("Test") or ["NONE"]; print("\n".join(t[1:] if t[0]=="CMD" else []))')
[ "${#health_cmd[@]}" -gt 0 ] || fail "the image has no HEALTHCHECK CMD"
ready=""
for _ in $(seq 60); do
  if run_in_image "${health_cmd[@]}" --ready >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.5
done
[ -n "$ready" ] || fail "not ready: $(run_in_image "${health_cmd[@]}" --ready 2>&1 || true)"
run_in_image "${health_cmd[@]}" >/dev/null || fail "the health check ${health_cmd[*]} failed"
echo "health check '${health_cmd[*]}' passes; ready"

step "a signed Stripe event posted from the host"
for kv in "${env_args[@]}"; do export "${kv?}"; done
target/debug/relayd send-test-event stripe --config deploy/image/relayd.toml --type invoice.paid \
  || fail "the event was not accepted"
for _ in $(seq 60); do
  grep -q "received stripe invoice.paid" "$work/receiver.log" && break
  sleep 0.5
done
grep -q "received stripe invoice.paid" "$work/receiver.log" \
  || { cat "$work/receiver.log" "$work/relayd.log" >&2; fail "the receiver got no verified delivery"; }
grep "received stripe invoice.paid" "$work/receiver.log"

step "SIGTERM"
kill -TERM "$pid"
status=0
wait "$relayd_job" || status=$?
[ "$status" -eq 0 ] || { tail -20 "$work/relayd.log" >&2; fail "relayd exited $status after SIGTERM"; }
grep -q '"relayd stopped"' "$work/relayd.log" || fail "relayd did not log its stop"
echo "smoke-test: passed ($tag: $(( size / 1000000 )) MB)"
