#!/usr/bin/env bash
# Build a small real Debian 12 guest disk from Debian's packages only (deb.debian.org):
# Debian's cloud kernel, cloud-init, openssh-server, systemd, a serial console. Users upload
# images like it; the tests boot it to prove that ucloud's NoCloud seed works with the
# software real images run, not only with our own init.
#
# usage: build-debian-image.sh OUTDIR
#   -> OUTDIR/debian.raw (2 GiB, sparse: about 0.6 GiB used), OUTDIR/debian.raw.source
# env:  DEBIAN_MIRROR  (default http://deb.debian.org/debian)
#       GUEST_IMAGE_CACHE  the machine's cache of built images (default /var/cache/ucloud/guests;
#                      empty: none)
#
# Cached by content: OUTDIR/debian.raw.source holds the sha256 of this script (which holds
# the package list and every setting); a build is skipped when it matches. A build is also
# kept as GUEST_IMAGE_CACHE/debian-<sha256>.raw, so a fresh checkout on the same machine (CI's
# clone, another worktree) copies it in seconds instead of building it again. Takes about 2-4
# minutes on a fresh machine (debootstrap is most of it), as root, without loop devices or
# mounts: debootstrap into a folder, `mkfs.ext4 -d` of that folder into the root partition,
# and a FAT16 boot partition with SYSLINUX, written with mtools (as build-linux-image.sh).
#
# The disk: MBR; partition 1 (FAT16, 127 MiB, bootable): SYSLINUX, the kernel and initrd,
# booting `root=LABEL=ucroot console=tty0 console=ttyS0,115200`; partition 2 (ext4, label
# ucroot): the system. A kernel upgrade inside the guest does not update partition 1: this is
# a test image, not one to keep up to date.
#
# The guest: cloud-init (datasources NoCloud, then None) takes the hostname, the SSH keys
# (user `debian`, no password) and the user-data from a `cidata` CD-ROM, prints the SSH host
# keys and the authorised keys' fingerprints on ttyS0, and a login prompt
# "<hostname> login:" follows. No SSH host keys or machine-id are baked in: each VM makes its
# own on first boot.
# Host packages: debootstrap fdisk syslinux syslinux-common mtools dosfstools e2fsprogs.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=build-debian-image
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
need_root
mkdir -p "$1"
OUT=$(realpath "$1")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DISK_MB=2048
BOOT_MB=127   # partition 1 starts at 1 MiB, partition 2 at 128 MiB
PACKAGES=(
  linux-image-cloud-amd64 initramfs-tools udev systemd-sysv
  cloud-init python3-cffi-backend  # debootstrap misses the virtual package cryptography needs
  openssh-server ifupdown isc-dhcp-client netbase iproute2 e2fsprogs
  dbus  # systemd-logind needs it, and logind turns ACPI's power button into a clean shutdown
)

SOURCE=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-64)
exec 7>"$OUT/.debian.lock"   # one build per OUTDIR at a time; the others then find it done
flock 7
if [ -e "$OUT/debian.raw" ] && [ "$(cat "$OUT/debian.raw.source" 2>/dev/null)" = "$SOURCE" ]; then
  log "debian: up to date ($OUT/debian.raw)"
  exit 0
fi
CACHE=${GUEST_IMAGE_CACHE-/var/cache/ucloud/guests}
CACHED=${CACHE:+$CACHE/debian-$SOURCE.raw}
if [ -n "$CACHED" ] && [ -e "$CACHED" ]; then
  cp --sparse=always "$CACHED" "$OUT/.debian.raw.tmp"
  mv -f "$OUT/.debian.raw.tmp" "$OUT/debian.raw"
  echo "$SOURCE" >"$OUT/debian.raw.source"
  log "debian: copied from the machine's cache ($CACHED)"
  exit 0
fi
need_cmds debootstrap sfdisk mkfs.vfat mkfs.ext4 syslinux mcopy chroot
[ -e /usr/lib/syslinux/mbr/mbr.bin ] || die "missing /usr/lib/syslinux/mbr/mbr.bin (apt-get install syslinux-common)"

W=$(mktemp -d "$OUT/.debian.XXXXXX")
trap 'rm -rf "$W"' EXIT
ROOT="$W/root"

log "debootstrap $SUITE from $MIRROR (${PACKAGES[*]})"
include=$(IFS=,; echo "${PACKAGES[*]}")
debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOT" "$MIRROR" >"$W/debootstrap.log" 2>&1 \
  || die "debootstrap failed: $(tail -20 "$W/debootstrap.log")"
log "debootstrap done"

# --- configure the system ------------------------------------------------------------------
cat >"$ROOT/etc/fstab" <<'EOS'
LABEL=ucroot / ext4 defaults,errors=remount-ro 0 1
EOS
cat >"$ROOT/etc/cloud/cloud.cfg.d/90-ucloud.cfg" <<'EOS'
# ucloud gives every VM a NoCloud seed (a CD-ROM labelled cidata): look nowhere else, so a
# boot does not wait for metadata servers that do not exist.
datasource_list: [NoCloud, None]
# The image has no locales package: C.UTF-8 is built into the C library.
locale: C.UTF-8
EOS
cat >"$ROOT/etc/network/interfaces" <<'EOS'
# cloud-init writes the network configuration (/etc/network/interfaces.d/50-cloud-init)
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
EOS
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOT/etc/apt/sources.list"
# Each VM makes its own: no host keys, machine-id or hostname from the build.
rm -f "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
echo localhost >"$ROOT/etc/hostname"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log
KERNEL=$(cd "$ROOT/boot" && ls vmlinuz-* | sort -V | tail -1)
INITRD=initrd.img-${KERNEL#vmlinuz-}
[ -s "$ROOT/boot/$INITRD" ] || die "no $INITRD in the system (initramfs-tools did not run?)"
cp "$ROOT/boot/$KERNEL" "$W/vmlinuz"
cp "$ROOT/boot/$INITRD" "$W/initrd.img"

# --- disk ----------------------------------------------------------------------------------
IMG="$W/debian.raw"
truncate -s "${DISK_MB}M" "$IMG"
printf 'start=2048, size=%d, type=6, bootable\nstart=%d, type=83\n' \
  $((BOOT_MB * 2048)) $(((BOOT_MB + 1) * 2048)) | sfdisk -q "$IMG"
mkfs.vfat -F 16 -n UCBOOT --offset 2048 "$IMG" $((BOOT_MB * 1024)) >/dev/null
syslinux --offset $((2048 * 512)) --install "$IMG"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$IMG" bs=440 count=1 conv=notrunc status=none
cat >"$W/syslinux.cfg" <<'EOS'
SERIAL 0 115200
DEFAULT debian
TIMEOUT 0
PROMPT 0
LABEL debian
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND root=LABEL=ucroot ro console=tty0 console=ttyS0,115200
EOS
MTOOLS_SKIP_CHECK=1 mcopy -i "$IMG@@1M" "$W/syslinux.cfg" "$W/vmlinuz" "$W/initrd.img" ::/
ROOT_MB=$((DISK_MB - BOOT_MB - 1))
mkfs.ext4 -q -d "$ROOT" -L ucroot "$W/root.ext4" "${ROOT_MB}M"
dd if="$W/root.ext4" of="$IMG" bs=1M seek=$((BOOT_MB + 1)) conv=notrunc,sparse status=none

mv -f "$IMG" "$OUT/debian.raw"
echo "$SOURCE" >"$OUT/debian.raw.source"
if [ -n "$CACHED" ]; then
  # Only this script's current build is kept: older ones are for scripts that are gone.
  mkdir -p "$CACHE"
  rm -f "$CACHE"/debian-*.raw
  cp --sparse=always "$OUT/debian.raw" "$CACHED.tmp$$" && mv -f "$CACHED.tmp$$" "$CACHED"
fi
log "built $OUT/debian.raw ($DISK_MB MiB, $(du -m "$OUT/debian.raw" | cut -f1) MiB used; kernel ${KERNEL#vmlinuz-}) in $(elapsed)s"
