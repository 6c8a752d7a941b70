#!/usr/bin/env bash
# Install what ucloud needs on Debian 12, as root: Debian packages (etcd, Ceph, libvirt, QEMU,
# test-guest tools) and the project's virtualenv in .venv. Safe to run again: it installs
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  etcd-server etcd-client
  ceph-mon ceph-mgr ceph-osd ceph-common python3-rados python3-rbd
  qemu-system-x86 qemu-utils qemu-block-extra
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  nasm iproute2 uuid-runtime curl
  wrk  # the API benchmark's load generator (bench/api.py)
  prometheus  # tests/test_metrics.py scrapes the stack with it; promtool checks conf/prometheus/
  # the network tests' pings: iputils' ping sets "don't fragment" (-M do), busybox's cannot
  iputils-ping
  nftables  # the host agent's port security and VXLAN peer filter (ucloud/host/netfilter.py)
  dnsmasq-base  # the network router's RAs and DHCPv4 (ucloud/host/gateway.py)
  # guest-image build (scripts/build-guests.sh). busybox-static replaces and conflicts with
  # busybox (it provides /bin/busybox too, and `busybox ping`): list only the static one, or
  # every run would try to install both.
  fdisk busybox-static syslinux syslinux-common mtools dosfstools cpio
  # the Debian test guest (scripts/guests/build-debian-image.sh), and cloud-init's own schema
  # check of the seeds ucloud makes (tests/test_seed.py)
  debootstrap e2fsprogs cloud-init
  python3 python3-venv python3-dev gcc
  # the console page's browser tests: Playwright drives Debian's chromium (never a
  # downloaded browser)
  chromium
)

# npm for the console page's browser libraries (npm ci below); a machine with Node.js from
# elsewhere (NodeSource's nodejs bundles npm) keeps it.
command -v npm >/dev/null || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not start services (etcd-server would grab port 2379): we start
  # every daemon ourselves, on our own ports.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
  # cloud-init is here for its schema check only: it must never configure this machine at its
  # next boot. (A machine that had cloud-init before keeps it as it was.)
  if [[ " ${missing[*]} " == *" cloud-init "* ]]; then
    mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
  fi
fi

# libvirtd runs without systemd; it looks the QEMU account up before reading qemu.conf.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -M -d /var/lib/libvirt -s /usr/sbin/nologin -g kvm libvirt-qemu

PY=${UCLOUD_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# rados and rbd come only as Debian's builds for Python 3.11: expose just those two modules.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/ceph-bindings
for so in /usr/lib/python3/dist-packages/rados*.so /usr/lib/python3/dist-packages/rbd*.so; do
  [ -e "$so" ] && ln -sf "$so" .venv/ceph-bindings/
done
# The real path: a worktree whose .venv is a link to another checkout's must not repoint it.
echo "$(realpath .venv)/ceph-bindings" > "$site/ucloud-ceph-bindings.pth"

stamp=.venv/.installed-$(sha256sum pyproject.toml 2>/dev/null | cut -c1-16)
if [ -f pyproject.toml ] && [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# noVNC and xterm.js for the console page, exactly as package-lock.json pins them; npm ci also
# bundles noVNC into the one module the page loads (package.json's prepare script, esbuild).
bundle=node_modules/.ucloud/novnc/rfb.js
if [ ! -f "$bundle" ] || [ package-lock.json -nt node_modules/.package-lock.json ] ||
  [ package.json -nt "$bundle" ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
