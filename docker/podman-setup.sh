# Podman set-up shared by docker/container-test.sh and docker/compose-test.sh (sourced, not
# run). Installs podman, buildah, runc, debootstrap, curl, the bridge network with its DNS
# (netavark, aardvark-dns: compose services find each other by name) and the firewall tool
# netavark drives (iptables) from Debian when one is missing, and configures podman for a machine with no overlay filesystem and no systemd:
# vfs storage, runc, cgroupfs, a file events log, explicit file limits. Existing settings
# are kept.
# iptables: bookworm's netavark (1.4) sets up every network, the host network's build steps
# included, with iptables and knows no other firewall driver (nftables came in 1.13), and a
# bare Debian has no iptables: without it the first RUN of a build fails with
# "netavark: No such file or directory". So it is installed here, with the rest.
missing=()
for tool in podman buildah runc debootstrap curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
for tool in netavark aardvark-dns; do [ -x "/usr/lib/podman/$tool" ] || missing+=("$tool"); done
[ -x /usr/sbin/iptables ] || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        podman buildah runc debootstrap curl netavark aardvark-dns iptables >/dev/null
fi
unset missing
mkdir -p /etc/containers
if ! grep -qs 'driver = "vfs"' /etc/containers/storage.conf; then
    cat > /etc/containers/storage.conf <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
if ! grep -qs 'cgroup_manager = "cgroupfs"' /etc/containers/containers.conf; then
    cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi
