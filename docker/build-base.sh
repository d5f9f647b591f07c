#!/usr/bin/env bash
# Build the bookworm base image with debootstrap (no registry needed) and load it into podman.
# The rootfs tarball is cached under .cache/container/, so later runs only `podman import` it.
# Usage: docker/build-base.sh [image-name]
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-localhost/modalfuse-base:bookworm}
CACHE=.cache/container
TARBALL=$CACHE/bookworm-base.tar
PACKAGES=python3,python3-venv,libgomp1,ca-certificates

debian_mirror() {
    # The mirror this machine's apt already uses (deb822 .sources or one-line sources.list).
    local m
    m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1 || true)
    if [ -z "$m" ]; then
        m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    [ -n "$m" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
    echo "$m"
}

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    MIRROR=$(debian_mirror)
    ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    echo "debootstrap bookworm from $MIRROR (cached afterwards in $TARBALL)"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap.log"; exit 1; }
    # Smaller image: apt lists, docs and locales are not needed at run time.
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/usr/share/doc/* \
           "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/* "$ROOT"/usr/share/info/*
    chmod 0755 "$ROOT"  # mktemp made it 0700; it becomes the image's /
    tar --numeric-owner -C "$ROOT" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
# An image's / must be 0755 or the non-root user is locked out; caches made before that
# rule existed are repacked once.
root_entry=$(set +o pipefail; tar -tvf "$TARBALL" 2>/dev/null | head -n1)
if [[ "$root_entry" == drwx------* ]]; then
    FIX=$(mktemp -d "$CACHE/repack.XXXXXX")
    tar --numeric-owner -C "$FIX" -xf "$TARBALL"
    chmod 0755 "$FIX"
    tar --numeric-owner -C "$FIX" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$FIX"
fi
podman import --change 'CMD ["/bin/bash"]' "$TARBALL" "$IMAGE" >/dev/null
echo "base image $IMAGE from $TARBALL"
