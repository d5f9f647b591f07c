#!/usr/bin/env bash
# Lay out the serve image's whole filesystem under $1: the Python interpreter, its standard
# library, the API's venv, and exactly the shared libraries they load (found with ldd), plus
# the few files of /etc a process needs (users, name resolution, CA certificates). No shell,
# no package manager, no coreutils: the `serve` target copies this folder onto `scratch`.
# Run inside the build stage, after the venv is installed.
set -euo pipefail
out=${1:?usage: serve-rootfs.sh OUT}
mkdir -p "$out"
# bookworm's merged /usr: /bin, /lib, /lib64 are links into /usr.
mkdir -p "$out/usr/bin" "$out/usr/lib" "$out/usr/lib64" "$out/etc" "$out/tmp" "$out/data" "$out/models"
ln -s usr/bin "$out/bin"; ln -s usr/lib "$out/lib"; ln -s usr/lib64 "$out/lib64"
chmod 1777 "$out/tmp"

copy() {  # copy paths as they are (links stay links), creating their folders under $out
    cp -a --parents "$@" "$out/"
}

# The interpreter, its standard library (less what a server never runs) and the venv.
copy /usr/bin/python3.11 /usr/bin/python3 /usr/lib/python3.11 /opt/venv
rm -rf "$out"/usr/lib/python3.11/{test,idlelib,tkinter,turtledemo,lib2to3,ensurepip,pydoc_data,distutils,config-3.11-x86_64-linux-gnu}

# Every shared library the interpreter and any extension module needs, by its real path and
# by the name the loader asks for.
mapfile -t objects < <(find /usr/bin/python3.11 /usr/lib/python3.11/lib-dynload /opt/venv \
    -type f \( -name '*.so' -o -name '*.so.*' -o -path /usr/bin/python3.11 \))
{ ldd "${objects[@]}" 2>/dev/null || true; } \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u \
    | while read -r lib; do
        real=$(readlink -f "$lib")
        case "$real" in /opt/venv/*) continue ;; esac  # already there, with the venv
        mkdir -p "$out$(dirname "$real")"
        cp -a "$real" "$out$(dirname "$real")/"
        asked="$(readlink -f "$(dirname "$lib")")/$(basename "$lib")"
        if [ "$asked" != "$real" ]; then
            mkdir -p "$out$(dirname "$asked")"
            ln -sf "$real" "$out$asked"
        fi
    done

# Users and groups (the image runs as modalfuse, 10001), name resolution, CA certificates.
copy /etc/passwd /etc/group /etc/nsswitch.conf /etc/host.conf /etc/ssl /usr/lib/ssl \
     /usr/share/ca-certificates
chown 10001:10001 "$out/data"
echo "serve rootfs: $(du -sm "$out" | cut -f1) MB in $out"
