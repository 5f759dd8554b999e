# shellcheck shell=bash
# Shared by scripts/container-test and scripts/compose-test (sourced, not run): podman with
# runc on cgroupfs, the Debian base images built from packages (no registry needed), and
# the project's image built from the Dockerfile on top of them.
#
# The sourcing script defines log, die, now and since, sets ROOT, LOGS (its log folder)
# and WORK (a scratch folder it removes), and calls remove_rootfs from its EXIT trap.
# Then: ensure_podman [extra apt packages...]; ensure_base_images (sets RUST_BASE); build_app
# (sets BUILD_SECONDS, BUILD_CACHED); podman_build ARGS... builds any other Containerfile.
#
# Environment: CONTAINER_REBUILD_BASE=1, CONTAINER_IMAGE (localhost/storefront:container-test),
# CONTAINER_NO_CACHE=1, CONTAINER_RUST_TOOLCHAIN, CONTAINER_EXTRA_CA_DIR,
# CONTAINER_DEBIAN_MIRROR / CONTAINER_SECURITY_MIRROR (default: what apt uses here).

HERE=$ROOT/scripts/container
SUITE=bookworm
CONF=/etc/containers/containers.conf
CACHE=/var/cache/storefront-container
APP_IMAGE=${CONTAINER_IMAGE:-localhost/storefront:container-test}
MINBASE_IMAGE=localhost/storefront-base-debian:$SUITE-minbase
RUNTIME_BASE=localhost/storefront-base-debian:$SUITE-slim
RUST_BASE=
PODMAN=(podman --runtime runc)
# podman schedules periodic health checks with systemd timers; this host has no systemd
# (errors on every run/stop otherwise). Health checks are run on demand instead.
export DISABLE_HC_SYSTEMD=true
NICE=(nice -n 19)
command -v ionice >/dev/null 2>&1 && NICE+=(ionice -c 3)

ROOTFS=
# A debootstrap that failed half-way may leave /proc, /sys or /dev mounted in its root:
# unmount those first, and never let rm cross into another file system.
remove_rootfs() {
  [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
  awk -v r="$ROOTFS/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n 1 umount -l
  rm -rf --one-file-system "$ROOTFS"
  ROOTFS=
}

# --- podman -----------------------------------------------------------------------------
# Installs podman, runc, debootstrap (and the Debian packages named as arguments) when
# missing, and sets cgroup_manager = "cgroupfs" and default_ulimits = [] in
# /etc/containers/containers.conf (other settings kept).
ensure_podman() {
  local need=() p
  for p in podman runc debootstrap; do command -v "$p" >/dev/null 2>&1 || need+=("$p"); done
  for p in "$@"; do dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} with apt"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  python3 "$HERE/containers-conf.py" "$CONF" 'engine.cgroup_manager="cgroupfs"' 'containers.default_ulimits=[]' >&2
}

# --- base images ------------------------------------------------------------------------
podman_build() { "${NICE[@]}" "${PODMAN[@]}" build --network host --pull=never --format docker "$@"; }

build_minbase() {
  local mirrors mirror security
  mirrors=$(python3 "$HERE/debian-mirrors.py" "$SUITE")
  mirror=${CONTAINER_DEBIAN_MIRROR:-$(sed -n 1p <<<"$mirrors")}
  security=${CONTAINER_SECURITY_MIRROR:-$(sed -n 2p <<<"$mirrors")}
  ROOTFS=$(mktemp -d /var/tmp/storefront-minbase.XXXXXX)
  mkdir -p "$CACHE/debs"
  log "debootstrap --variant=minbase $SUITE from $mirror (log: $LOGS/debootstrap.log)"
  "${NICE[@]}" debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$ROOTFS" "$mirror" \
    >"$LOGS/debootstrap.log" 2>&1 || { tail -n 30 "$LOGS/debootstrap.log" >&2; die "debootstrap failed"; }
  # Like the official debian images: deb822 sources with updates and security, no
  # recommends-free surprises, no docs/man/locales, no apt caches or host identity.
  rm -f "$ROOTFS/etc/apt/sources.list"
  cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
# As in debian:*-slim: no documentation, manuals or translations in the image.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
  find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$ROOTFS"/usr/share/{man,info,groff,lintian,linda}/* "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log \
    "$ROOTFS"/var/log/apt/* "$ROOTFS/debootstrap"
  find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
  : >"$ROOTFS/etc/machine-id"
  awk -v r="$ROOTFS/" 'index($2, r) == 1 {print $2}' /proc/mounts | grep -q . \
    && die "debootstrap left file systems mounted under $ROOTFS"
  tar --numeric-owner -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $SUITE $mirror" \
    - "$MINBASE_IMAGE" >/dev/null
  remove_rootfs
}

ensure_base_images() {
  local toolchain version rebuilt=false no_cache=()
  toolchain=$(readlink -f "${CONTAINER_RUST_TOOLCHAIN:-$(rustc --print sysroot)}")
  [ -x "$toolchain/bin/cargo" ] || die "no cargo in the host toolchain $toolchain"
  version=$("$toolchain/bin/rustc" --version | awk '{print $2}')
  RUST_BASE=localhost/storefront-base-rust:$version-$SUITE
  if [ "${CONTAINER_REBUILD_BASE:-0}" = 1 ]; then rebuilt=true; no_cache=(--no-cache); fi

  if $rebuilt || ! podman image exists "$MINBASE_IMAGE"; then
    local t
    t=$(now)
    build_minbase
    log "built $MINBASE_IMAGE in $(since "$t") s"
    rebuilt=true
  fi
  if $rebuilt || ! podman image exists "$RUNTIME_BASE"; then
    local t
    t=$(now)
    log "building $RUNTIME_BASE (log: $LOGS/runtime-base.log)"
    podman_build "${no_cache[@]}" --build-arg MINBASE="$MINBASE_IMAGE" \
      -f "$HERE/runtime-base.Containerfile" -t "$RUNTIME_BASE" "$WORK/empty" >"$LOGS/runtime-base.log" 2>&1 \
      || { tail -n 30 "$LOGS/runtime-base.log" >&2; die "building $RUNTIME_BASE failed"; }
    log "built $RUNTIME_BASE in $(since "$t") s"
    rebuilt=true
  fi
  # The host's extra CAs go into the build base (cargo fetches through this host's egress);
  # a change to them rebuilds it.
  local ca_dir=${CONTAINER_EXTRA_CA_DIR:-/usr/local/share/ca-certificates} ca_sum
  mkdir -p "$WORK/rust-ctx/ca"
  : >"$WORK/rust-ctx/ca/.keep"
  find "$ca_dir" -maxdepth 2 -name '*.crt' -type f -exec cp {} "$WORK/rust-ctx/ca/" \; 2>/dev/null || true
  ca_sum=$(cat "$WORK"/rust-ctx/ca/*.crt 2>/dev/null | sha256sum | cut -c1-16)
  if podman image exists "$RUST_BASE" \
    && [ "$(podman image inspect --format '{{index .Labels "storefront.extra-ca"}}' "$RUST_BASE")" != "$ca_sum" ]; then
    log "the host's extra CA certificates changed: rebuilding $RUST_BASE"
    rebuilt=true
  fi
  if $rebuilt || ! podman image exists "$RUST_BASE"; then
    local t
    t=$(now)
    log "building $RUST_BASE from $toolchain, $(find "$WORK/rust-ctx/ca" -name '*.crt' | wc -l) extra CA(s) (log: $LOGS/rust-base.log)"
    podman_build "${no_cache[@]}" --build-arg RUNTIME_BASE="$RUNTIME_BASE" -v "$toolchain:/mnt/toolchain:ro" \
      --label "storefront.extra-ca=$ca_sum" --label "storefront.rust-toolchain=$version" \
      -f "$HERE/rust-base.Containerfile" -t "$RUST_BASE" "$WORK/rust-ctx" >"$LOGS/rust-base.log" 2>&1 \
      || { tail -n 30 "$LOGS/rust-base.log" >&2; die "building $RUST_BASE failed"; }
    log "built $RUST_BASE in $(since "$t") s"
  fi
  log "base images: $RUNTIME_BASE, $RUST_BASE"
}

# --- the project's image ----------------------------------------------------------------
# Two builds of the same Dockerfile: `--target build` (the cargo step, tagged
# $APP_IMAGE-build so that it stays cached and is not taken for a dangling image), then the
# whole file, whose build stage comes from that cache. A build that replaces either image
# removes the old one (each build stage holds a ~2.5 GB target dir).
build_app() {
  local t no_cache=() rc old_build old_app target tag
  t=$(now)
  [ "${CONTAINER_NO_CACHE:-0}" = 1 ] && no_cache=(--no-cache)
  old_build=$(podman image inspect --format '{{.Id}}' "$APP_IMAGE-build" 2>/dev/null || true)
  old_app=$(podman image inspect --format '{{.Id}}' "$APP_IMAGE" 2>/dev/null || true)
  log "building $APP_IMAGE from Dockerfile (log: $LOGS/build.log; the cargo step takes a while)"
  : >"$LOGS/build.log"
  for target in build final; do
    local args=()
    if [ "$target" = build ]; then args=(--target build -t "$APP_IMAGE-build"); else args=(-t "$APP_IMAGE"); fi
    set +e
    podman_build "${no_cache[@]}" --build-arg RUST_IMAGE="$RUST_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
      -f Dockerfile "${args[@]}" . 2>&1 | tee -a "$LOGS/build.log" \
      | { grep --line-buffered -E '^(\[[0-9]+/[0-9]+\] )?(STEP [0-9]+|COMMIT)|^--> Using cache' >&2 || true; }
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" != 0 ]; then
      tail -n 40 "$LOGS/build.log" >&2
      die "podman build ($target) failed (exit $rc; see $LOGS/build.log)"
    fi
    no_cache=()
  done
  for tag in "$APP_IMAGE-build:$old_build" "$APP_IMAGE:$old_app"; do
    local old=${tag##*:} name=${tag%:*}
    if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$name")" ]; then
      if podman rmi "$old" >/dev/null 2>&1; then log "removed the previous $name (${old:0:12})"; fi
    fi
  done
  BUILD_SECONDS=$(since "$t")
  BUILD_CACHED=$(grep -q 'Compiling storefront' "$LOGS/build.log" && echo "compiled" || echo "cached layers")
  log "built $APP_IMAGE in $BUILD_SECONDS s ($BUILD_CACHED)"
}
