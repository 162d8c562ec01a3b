#!/usr/bin/env bash
# Build Pinwheel's podman base images with debootstrap.
#
#   scripts/build-image.sh [RELEASE-ARCH ...]      default: all four below
#
# Each RELEASE-ARCH (bookworm-amd64, bullseye-amd64, trixie-amd64,
# bookworm-armhf) becomes the image localhost/pinwheel-RELEASE-ARCH: a minimal
# Debian with systemd as init and what Ansible needs to manage it. The
# debootstrapped root filesystem is kept as a tarball in $IMAGE_CACHE
# (.cache/images/), so a wiped podman store re-imports in seconds instead of
# re-running debootstrap; the downloaded packages are kept in
# .cache/images/debs/, so a changed recipe rebuilds without downloading again.
#
# Nothing is rebuilt that is up to date: an image, or a cached tarball, carries
# the hash of the recipe that made it (release, architecture, mirror, package
# list, the configuration steps below); change any of them and the image is
# built again. FORCE=1 rebuilds regardless.
#
# Environment:
#   CONTAINERS_CONF  podman configuration (default: molecule/podman/containers.conf)
#   IMAGE_CACHE      where rootfs tarballs are kept (default: .cache/images)
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   FORCE=1          rebuild even if an up-to-date image or tarball exists
#   JOBS             how many images to build at once (default 4: debootstrap
#                    mostly waits on the network and the disk)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO/molecule/podman/containers.conf}
IMAGE_CACHE=${IMAGE_CACHE:-$REPO/.cache/images}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FORCE=${FORCE:-0}
JOBS=${JOBS:-4}
ALL=(bookworm-amd64 bullseye-amd64 trixie-amd64 bookworm-armhf)

# Packages on top of debootstrap's minbase: systemd as init, what Ansible's
# modules need (python3, python3-apt for the apt module, sudo for become),
# and the basics a real host has (certificates, ip, ps/pkill, dbus).
PACKAGES=systemd-sysv,dbus,python3,python3-apt,sudo,ca-certificates,iproute2,procps,gpg
# Bump when the configuration steps in configure_rootfs change.
RECIPE_VERSION=3

die() { echo "build-image: error: $*" >&2; exit 1; }
say() { echo "build-image: $*"; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}

podman_arch() {  # Debian architecture -> podman/OCI architecture
  case $1 in
    amd64) echo amd64 ;;
    armhf) echo arm ;;
    arm64) echo arm64 ;;
    *) die "unknown architecture '$1' (known: amd64, armhf, arm64)" ;;
  esac
}

recipe_hash() {  # release arch
  {
    echo "recipe=$RECIPE_VERSION release=$1 arch=$2 packages=$PACKAGES"
    echo "mirror=$DEBIAN_MIRROR"
    declare -f configure_rootfs
  } | sha256sum | cut -c1-16
}

check_prerequisites() {
  [ "$(id -u)" = 0 ] || die "debootstrap and podman import need root: run this as root"
  local missing=()
  for tool in podman debootstrap runc tar; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ ${#missing[@]} = 0 ] || die "missing ${missing[*]}: apt-get install podman runc debootstrap"
  [ -r "$CONTAINERS_CONF" ] || die "CONTAINERS_CONF=$CONTAINERS_CONF is not readable"
}

# Foreign architectures run through qemu-user-static's binfmt handlers. On a
# host whose PID 1 is not systemd nobody mounts binfmt_misc or enables the
# handlers that binfmt-support registered: do both. Debian registers them
# without the C (credentials) flag, so setuid programs in an emulated
# container run without their privileges: `sudo` there says "effective uid is
# not 0", and a builder's agent cannot start builds as its build user. Register
# the handler again with C (which implies O), as the usual multi-arch
# container setups do. All of this is runtime kernel state: no file changes,
# and it is redone after a reboot by the next `make images`, `make farm` or
# `make test-fleet`.
ensure_binfmt() {  # debian arch
  local handler entry flags interpreter magic mask
  case $1 in
    armhf) handler=qemu-arm ;;
    arm64) handler=qemu-aarch64 ;;
    *) return 0 ;;
  esac
  if [ "$(dpkg --print-architecture)" = "$1" ]; then return 0; fi
  if ! command -v update-binfmts >/dev/null || [ ! -e "/usr/libexec/qemu-binfmt/${handler#qemu-}-binfmt-P" ]; then
    die "emulating $1 needs qemu-user-static and binfmt-support: apt-get install qemu-user-static binfmt-support"
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc (is this a container without privileges?)"
  fi
  entry=/proc/sys/fs/binfmt_misc/$handler
  if ! grep -qx enabled "$entry" 2>/dev/null; then
    update-binfmts --enable "$handler" >/dev/null \
      || die "cannot enable the $handler binfmt handler: try 'update-binfmts --enable $handler'"
  fi
  flags=$(sed -n 's/^flags: //p' "$entry")
  [[ $flags == *F* ]] \
    || die "the $handler binfmt handler lacks the F flag, so containers cannot use it: reinstall qemu-user-static"
  if [[ $flags != *C* ]]; then
    interpreter=$(sed -n 's/^interpreter //p' "$entry")
    magic=$(sed -n 's/^magic //p' "$entry" | sed 's/../\\x&/g')
    mask=$(sed -n 's/^mask //p' "$entry" | sed 's/../\\x&/g')
    echo -1 >"$entry"
    printf ':%s:M:0:%s:%s:%s:%sOC\n' "$handler" "$magic" "$mask" "$interpreter" "${flags//[OC]/}" \
      >/proc/sys/fs/binfmt_misc/register \
      || die "cannot register the $handler binfmt handler again; run 'update-binfmts --enable $handler' and retry"
    say "$handler binfmt handler registered with flags ${flags}OC (setuid programs such as sudo work in emulated containers)"
  fi
}

# Turn a fresh debootstrap tree into a container base image.
configure_rootfs() {  # rootfs release
  local root=$1 release=$2
  # The release's main suite only. Its -updates and -security suites change
  # daily, and the caching proxy between these machines and the mirror has
  # served their lists out of step with their Release files ("File has
  # unexpected size ... Mirror sync in progress?"), failing whole test runs.
  # Package lists are not kept: as in Debian's own container images, the
  # first apt task updates them.
  cat >"$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $release main
EOF
  # No manuals or translations: smaller images, faster package installs.
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-pinwheel-nodoc" <<'EOF'
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*/
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  # apt: no translations; dpkg: no fsync per file (a throwaway container, and
  # the emulated armhf one installs packages ten times slower as it is).
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/99-pinwheel-image"
  echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/02-pinwheel-unsafe-io"
  # Units that have nothing to do in a container; apt's timers would take
  # the dpkg lock in the middle of a playbook run.
  for unit in getty.target console-getty.service systemd-udevd.service \
              systemd-udev-trigger.service systemd-remount-fs.service \
              sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount \
              systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
  done
  # A fresh machine-id per container (systemd makes one at boot).
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id" "$root/usr/sbin/policy-rc.d"
  # podman provides these per container.
  : >"$root/etc/hostname"
  rm -f "$root/etc/resolv.conf"
  find "$root/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
  rm -rf "$root"/var/lib/apt/lists/partial/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/debootstrap \
         "$root"/var/lib/apt/periodic/update-success-stamp
  # apt's cache looks as old as it can: Ansible's apt module judges the age of
  # the package lists by this directory's time, and its cache_valid_time must
  # never take an empty cache for a fresh one.
  touch -d @0 "$root/var/lib/apt/lists"
}

build_tarball() {  # release arch tarball
  local release=$1 arch=$2 tarball=$3 work rootfs
  mkdir -p "$IMAGE_CACHE"
  work=$(mktemp -d "$IMAGE_CACHE/.build-$release-$arch.XXXXXX")
  # shellcheck disable=SC2064  # expand now: the trap must remove this build's directory
  trap "rm -rf '$work'" EXIT
  rootfs=$work/rootfs
  say "debootstrap $release/$arch from $DEBIAN_MIRROR (log: $work/debootstrap.log)"
  mkdir -p "$IMAGE_CACHE/debs/$release-$arch"
  if ! debootstrap --variant=minbase --arch="$arch" --include="$PACKAGES" \
        --cache-dir="$(cd "$IMAGE_CACHE/debs/$release-$arch" && pwd)" \
        "$release" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1; then
    cp "$work/debootstrap.log" "$IMAGE_CACHE/debootstrap-$release-$arch.log" 2>/dev/null || true
    tail -n 20 "$work/debootstrap.log" >&2
    [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap of $release/$arch failed (full log: $IMAGE_CACHE/debootstrap-$release-$arch.log);" \
        "check that $DEBIAN_MIRROR is reachable, then run this again"
  fi
  configure_rootfs "$rootfs" "$release"
  tar --numeric-owner --xattrs --acls -C "$rootfs" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$tarball"
  rm -rf "$work"
  trap - EXIT
}

build_one() {  # RELEASE-ARCH
  local spec=$1 release arch image recipe tarball start current
  [[ $spec =~ ^([a-z]+)-([a-z0-9]+)$ ]] || die "'$spec' is not RELEASE-ARCH (e.g. bookworm-amd64)"
  release=${BASH_REMATCH[1]} arch=${BASH_REMATCH[2]}
  case $release in
    bullseye|bookworm|trixie) ;;
    *) die "unsupported release '$release': Pinwheel's builders run bullseye, bookworm or trixie" ;;
  esac
  image=localhost/pinwheel-$release-$arch
  recipe=$(recipe_hash "$release" "$arch")
  tarball=$IMAGE_CACHE/pinwheel-$release-$arch.tar
  start=$SECONDS
  ensure_binfmt "$arch"

  if [ "$FORCE" != 1 ] && podman image exists "$image"; then
    current=$(podman image inspect --format '{{ index .Labels "pinwheel.recipe" }}' "$image" 2>/dev/null || true)
    if [ "$current" = "$recipe" ]; then
      say "$image is up to date"
      return 0
    fi
    say "$image was built from another recipe ($current, now $recipe): rebuilding"
  fi
  if [ "$FORCE" = 1 ] || [ ! -s "$tarball" ] || [ "$(cat "$tarball.recipe" 2>/dev/null)" != "$recipe" ]; then
    rm -f "$tarball" "$tarball.recipe"
    build_tarball "$release" "$arch" "$tarball"
    echo "$recipe" >"$tarball.recipe"
    say "$release/$arch root filesystem built in $((SECONDS - start)) s ($(du -h "$tarball" | cut -f1))"
  else
    say "reusing the cached root filesystem $tarball"
  fi
  podman import --quiet --arch "$(podman_arch "$arch")" \
    --change 'CMD ["/sbin/init"]' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change "LABEL pinwheel.recipe=$recipe" \
    --change "LABEL pinwheel.release=$release" \
    --change "LABEL pinwheel.arch=$arch" \
    --message "pinwheel base image $release/$arch (recipe $recipe)" \
    "$tarball" "$image" >/dev/null \
    || die "podman import of $tarball failed; remove it and run this again to rebuild it"
  say "$image ready in $((SECONDS - start)) s"
}

main() {
  case ${1:-} in -h|--help) usage 0 ;; esac
  check_prerequisites
  local specs=("$@")
  [ ${#specs[@]} -gt 0 ] || specs=("${ALL[@]}")
  if [ ${#specs[@]} = 1 ] || [ "$JOBS" -le 1 ]; then
    for spec in "${specs[@]}"; do build_one "$spec"; done
    return 0
  fi
  # Several at once; each build's output is one line at a time, tagged.
  local -A pids=()
  local failed=() running
  for spec in "${specs[@]}"; do
    while running=$(jobs -rp | wc -l) && [ "$running" -ge "$JOBS" ]; do wait -n || true; done
    { ( build_one "$spec" ) 2>&1 | sed -u "s/^build-image: /build-image: [$spec] /"; } &
    pids[$spec]=$!
  done
  for spec in "${specs[@]}"; do
    wait "${pids[$spec]}" || failed+=("$spec")
  done
  [ ${#failed[@]} = 0 ] || die "failed to build: ${failed[*]} (see the messages above)"
}

main "$@"
