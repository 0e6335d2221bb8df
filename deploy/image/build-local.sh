#!/usr/bin/env bash
# Builds the real Dockerfile, unchanged, without a Docker engine or a registry:
#   1. makes the two base images it names from Debian packages, once (they stay in the
#      local image store and are reused):
#      - debian:bookworm-slim: a minbase bookworm root filesystem from debootstrap;
#      - rust:<version>-slim-bookworm: that image plus what the official Rust image
#        holds for building (gcc, libc6-dev, ca-certificates) and this machine's Rust
#        toolchain of the version the Dockerfile pins, copied in;
#   2. builds the Dockerfile with buildah (chroot isolation; its layers are cached).
#
#   deploy/image/build-local.sh [TAG]        default TAG: relayd:local
#
# Needs root, buildah, podman and debootstrap (apt-get install buildah podman
# debootstrap) and network access to Debian's and crates.io's package servers.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=${1:-relayd:local}
export BUILDAH_ISOLATION=chroot
work=${RELAYD_IMAGE_WORK:-/var/tmp/relayd-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
slim=docker.io/library/debian:bookworm-slim
rust_version=$(sed -n 's/^FROM rust:\([0-9.]*\)-slim-bookworm.*/\1/p' Dockerfile)
[ -n "$rust_version" ] || { echo "build-local: no 'FROM rust:<version>-slim-bookworm' in the Dockerfile" >&2; exit 1; }
builder=docker.io/library/rust:${rust_version}-slim-bookworm

for tool in buildah podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-local: needs $tool (apt-get install buildah podman debootstrap)" >&2; exit 1; }
done
step() { printf -- '--> %s\n' "$*"; }
# A cached base image is reused when it was made by this recipe (bump it on a change).
recipe=4
has_image() {
  local made
  made=$(buildah inspect --type image "$1" 2>/dev/null | python3 -c \
    'import json,sys; c=json.load(sys.stdin)["Docker"].get("config") or {}; print((c.get("Labels") or {}).get("relayd.recipe", ""))' \
    2>/dev/null) || return 1
  [ "$made" = "$recipe" ]
}

if has_image "$slim"; then
  step "$slim: cached"
else
  step "$slim from debootstrap --variant=minbase bookworm"
  rm -rf "$work/rootfs"
  mkdir -p "$work"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # As slim as Debian's own image: no downloaded packages, package lists,
  # documentation or translations, and dpkg told to install none of those later.
  root="$work/rootfs"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EXCLUDE'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EXCLUDE
  # …and apt keeps neither the packages it downloaded nor its caches (as Debian's
  # image does, in /etc/apt/apt.conf.d/docker-clean).
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
  buildah rmi "$slim" >/dev/null 2>&1 || true
  tar -C "$work/rootfs" -c . | podman import --quiet --change "LABEL relayd.recipe=$recipe" - "$slim" >/dev/null
  rm -rf "$work/rootfs"
fi

if has_image "$builder"; then
  step "$builder: cached"
else
  # This machine's toolchain of the pinned version (`rust:1.95` is any 1.95.x): the one
  # rustup names so, or the default one when it is that version. Only its binaries and
  # libraries are copied, not its documentation.
  sysroot=""
  for pick in "+$rust_version" "+$rust_version.0" ""; do
    found=$(rustc ${pick:+"$pick"} --print sysroot 2>/dev/null) || continue
    if "$found/bin/rustc" --version | grep -Eq "^rustc ${rust_version//./\\.}(\.[0-9]+)? "; then
      sysroot=$(realpath "$found")
      break
    fi
  done
  [ -n "$sysroot" ] \
    || { echo "build-local: this machine has no Rust $rust_version toolchain (rustup toolchain install $rust_version)" >&2; exit 1; }
  step "$builder from $slim and $sysroot"
  ctr=$(buildah from --pull=never "$slim")
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah run "$ctr" -- sh -c 'apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates gcc libc6-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/*'
  # This machine's own extra CA certificates (an egress proxy that intercepts TLS, as
  # on these sandboxes): cargo in the build reaches crates.io through it. Only the
  # builder gets them; the runtime image is Debian's alone.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    buildah copy --quiet "$ctr" /usr/local/share/ca-certificates/ /usr/local/share/ca-certificates/ >/dev/null
    buildah run "$ctr" -- update-ca-certificates >/dev/null
  fi
  for part in bin lib libexec etc; do
    if [ -d "$sysroot/$part" ]; then
      buildah copy --quiet "$ctr" "$sysroot/$part" "/usr/local/rust/$part" >/dev/null
    fi
  done
  buildah config \
    --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$rust_version" \
    --label relayd.recipe="$recipe" \
    "$ctr"
  buildah run "$ctr" -- sh -c 'rustc --version && cargo --version'
  buildah rmi "$builder" >/dev/null 2>&1 || true
  buildah commit --quiet --rm --format docker "$ctr" "$builder" >/dev/null
  trap - EXIT
fi

step "buildah bud -f Dockerfile -t $tag"
started=$(date +%s)
mkdir -p "$work"
# Docker's image format, as `docker build` makes: the OCI format drops HEALTHCHECK.
buildah bud --format docker --layers --pull=never --isolation chroot -f Dockerfile -t "$tag" . >"$work/build.log" 2>&1 \
  || { tail -60 "$work/build.log" >&2; echo "build-local: the build failed (whole log: $work/build.log)" >&2; exit 1; }
echo "build-local: built $tag in $(( $(date +%s) - started )) s"
# The build stages' layers stay as the next build's cache; those of builds older than a
# day go, so the store does not only grow.
podman image prune --force --filter until=24h >/dev/null
