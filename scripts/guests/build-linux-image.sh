#!/usr/bin/env bash
# Build a tiny bootable Linux disk image for VM tests from Debian packages only: Debian's
# kernel (linux-image-*-amd64, downloaded and extracted, not installed) and a busybox-static
# initramfs, booted by SYSLINUX from a FAT16 partition on an MBR disk. Needs no root mounts
# and no loop devices (sfdisk, mkfs.vfat --offset, syslinux --offset and mtools work on the
# image file directly).
#
# usage: build-linux-image.sh OUTDIR
#   -> OUTDIR/linux.raw (48 MiB), OUTDIR/linux.qcow2, OUTDIR/vmlinuz, OUTDIR/initrd.img
# env:  GUEST_CACHE  where the downloaded kernel package is kept (default OUTDIR/cache)
#
# The guest (all output on ttyS0, 115200):
#   - prints "UCLOUD-LINUX-BOOT-OK uptime=... kernel=... disks=... nics=... ip=..." once up
#     (15-25 s under TCG), then "UCLOUD-HEARTBEAT <seconds>" every 5 s;
#   - runs a shell on ttyS0 (serial consoles type into it);
#   - loads virtio (blk, net, console, rng), ata_piix/sd_mod and e1000 drivers;
#   - powers off on the ACPI power button (virDomainShutdown), printing
#     "UCLOUD-LINUX-POWEROFF", through busybox acpid;
#   - optional static address from the kernel command line (direct kernel boot with
#     OUTDIR/vmlinuz + initrd.img): uc.ip=A.B.C.D/NN [uc.gw=A.B.C.D].
#   - first boot from a cloud-init NoCloud seed (a CD-ROM, /dev/sr0, with meta-data and
#     user-data), before UCLOUD-LINUX-BOOT-OK, with these markers (tests/stack.py reads them):
#       UCLOUD-SEED label=<volume id> hostname=<local-hostname> keys=<public-keys in meta-data>
#         instance-id=<instance-id>       the seed was read; the hostname is set
#       UCLOUD-NO-SEED                    no seed CD-ROM
#       UCLOUD-FIRSTBOOT instance-id=...  first boot of this instance: a user-data starting
#         with "#!" runs as a shell script, in the background, its output on the console
#         between "UCLOUD-USERDATA-BEGIN" and "UCLOUD-USERDATA-END rc=<exit code>"
#       UCLOUD-FIRSTBOOT-DONE-BEFORE instance-id=...   this instance-id booted before from
#         this disk (remembered in INSTANCE.ID on the boot partition): nothing is run again
# Host packages: fdisk busybox-static syslinux syslinux-common mtools dosfstools cpio
# qemu-utils (scripts/install-deps.sh). busybox must be the static build: it is copied into
# the initramfs, which has no libc.
#
# Outputs are written to a temporary directory and moved into OUTDIR only when all of them
# are complete, so an interrupted build never leaves files that look up to date.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=build-linux-image
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"
OUT=$(realpath "$1")
CACHE=$(realpath -m "${GUEST_CACHE:-$OUT/cache}")
SIZE_MB=48

need_cmds apt-cache apt-get dpkg-deb busybox cpio gzip sfdisk mkfs.vfat syslinux mcopy qemu-img
[ -e /usr/lib/syslinux/mbr/mbr.bin ] || die "missing /usr/lib/syslinux/mbr/mbr.bin (apt-get install syslinux-common)"
BUSYBOX=$(readlink -f "$(command -v busybox)")
# a dynamically linked busybox would fail in the initramfs with "not found" for /init
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked; install busybox-static"
fi

W=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$W"' EXIT

# --- kernel: the package linux-image-amd64 currently points at, cached by version ----------
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 (apt-get update?)"
KVER=${KPKG#linux-image-}
KROOT="$CACHE/$KPKG"
mkdir -p "$CACHE"
exec 8>"$CACHE/.lock"   # GUEST_CACHE may be shared by builds of several OUTDIRs
flock 8
if [ ! -e "$KROOT/.complete" ]; then
  log "downloading $KPKG"
  rm -rf "$KROOT" "$CACHE/dl"
  mkdir -p "$CACHE/dl"
  (cd "$CACHE/dl" && apt-get download -q "$KPKG" >/dev/null 2>"$W/apt.err") \
    || die "apt-get download $KPKG failed: $(cat "$W/apt.err")"
  dpkg-deb -x "$CACHE"/dl/"${KPKG}"_*.deb "$KROOT"
  # Debian's package ships no modules.dep (depmod runs at install time): make one
  busybox depmod -b "$KROOT" "$KVER"
  rm -rf "$CACHE/dl"
  touch "$KROOT/.complete"
fi
flock -u 8
KMOD="$KROOT/lib/modules/$KVER"
[ -s "$KMOD/modules.dep" ] || die "no modules.dep in $KMOD (remove $KROOT and retry)"
log "kernel $KVER"

# --- initramfs -----------------------------------------------------------------------------
IR="$W/ir"
mkdir -p "$IR"/{bin,sbin,proc,sys,dev,tmp,var/log,etc/acpi/PWRF,"lib/modules/$KVER"}
cp "$BUSYBOX" "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"
# Drivers the test VMs need (the init script modprobes them). Their dependencies come from
# the kernel's own modules.dep, so the list survives kernel updates that move or add modules
# (6.1.0-56 moved t10-pi.ko, which sd_mod needs, from drivers/block/ to block/).
WANT=(virtio_pci virtio_blk virtio_net virtio_console virtio-rng button evdev ata_piix sd_mod e1000
  sr_mod cdrom isofs vfat nls_cp437 nls_ascii nls_utf8)
mapfile -t MODS < <(awk -v want="${WANT[*]}" '
  BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) { g = w[i]; gsub("-", "_", g); W[g] = 1 } }
  {
    path = $1; sub(":$", "", path); deps[path] = ""
    for (i = 2; i <= NF; i++) deps[path] = deps[path] " " $i
    name = path; sub(".*/", "", name); sub("[.]ko.*$", "", name); gsub("-", "_", name)
    if (name in W) { Q[++q] = path; found[name] = 1 }
  }
  END {
    for (i = 1; i <= q; i++) {          # breadth-first closure over the dependencies
      p = Q[i]; if (p in seen) continue; seen[p] = 1; print p
      m = split(deps[p], d, " "); for (j = 1; j <= m; j++) if (!(d[j] in seen)) Q[++q] = d[j]
    }
    for (g in W) if (!(g in found)) print "note: module " g " not found (built in?)" > "/dev/stderr"
  }' "$KMOD/modules.dep")
[ ${#MODS[@]} -gt 0 ] || die "no modules resolved from $KMOD/modules.dep"
for m in "${MODS[@]}"; do
  mkdir -p "$IR/lib/modules/$KVER/$(dirname "$m")"
  cp "$KMOD/$m" "$IR/lib/modules/$KVER/$m"
done
log "initramfs: ${#MODS[@]} modules (${WANT[*]} and their dependencies)"
cp "$KMOD"/modules.builtin* "$IR/lib/modules/$KVER/" 2>/dev/null || true
busybox depmod -b "$IR" "$KVER"

cat >"$IR/etc/acpi/PWRF/00000080" <<'EOS'
#!/bin/sh
echo "UCLOUD-LINUX-POWEROFF" > /dev/console
sync; poweroff -f
EOS
chmod +x "$IR/etc/acpi/PWRF/00000080"

cat >"$IR/init" <<'EOS'
#!/bin/sh
# A small reading of cloud-init's NoCloud seed (see first_boot below and the header).
yaml_value() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *\$/\1/p" "$2" | head -n 1; }
first_boot() {
  i=0
  while [ ! -b /dev/sr0 ] && [ $i -lt 15 ]; do sleep 0.2; i=$((i+1)); done
  mkdir -p /seed /disk
  if ! mount -t iso9660 -o ro /dev/sr0 /seed 2>/dev/null || [ ! -f /seed/meta-data ]; then
    echo "UCLOUD-NO-SEED" > /dev/console
    return
  fi
  iid=$(yaml_value instance-id /seed/meta-data)
  host=$(yaml_value local-hostname /seed/meta-data)
  keys=$(grep -c '^  - ' /seed/meta-data)
  [ -n "$host" ] && hostname "$host"
  echo "UCLOUD-SEED label=$(dd if=/dev/sr0 bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ') hostname=$(hostname) keys=$keys instance-id=$iid" > /dev/console
  # First boot happens once per instance-id, remembered on the VM's own disk (the boot
  # partition): a restart, on this host or another, of the same VM does not run it again.
  before=""; disk=""
  if mount -t vfat /dev/vda1 /disk 2>/dev/null; then
    disk=/disk; before=$(cat /disk/INSTANCE.ID 2>/dev/null)
  fi
  if [ -n "$iid" ] && [ "$before" = "$iid" ]; then
    echo "UCLOUD-FIRSTBOOT-DONE-BEFORE instance-id=$iid" > /dev/console
  else
    echo "UCLOUD-FIRSTBOOT instance-id=$iid" > /dev/console
    if [ -n "$disk" ]; then echo "$iid" > /disk/INSTANCE.ID; sync; fi
    if [ "$(head -c 2 /seed/user-data 2>/dev/null)" = "#!" ]; then
      cp /seed/user-data /tmp/user-data; chmod +x /tmp/user-data
      # In the background: a user-data script may serve for ever.
      ( echo "UCLOUD-USERDATA-BEGIN"; sh /tmp/user-data; echo "UCLOUD-USERDATA-END rc=$?" ) > /dev/console 2>&1 &
    fi
  fi
  [ -n "$disk" ] && umount /disk
}
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in button evdev virtio_pci virtio_blk virtio_net virtio_console virtio-rng ata_piix sd_mod e1000 sr_mod isofs vfat nls_cp437 nls_ascii nls_utf8; do
  modprobe $m 2>/dev/null
done
first_boot
# optional static IP from the kernel command line: uc.ip=10.0.0.5/24 [uc.gw=10.0.0.1]
for a in $(cat /proc/cmdline); do
  case $a in uc.ip=*) UCIP=${a#uc.ip=};; uc.gw=*) UCGW=${a#uc.gw=};; esac
done
ip link set lo up
if [ -n "$UCIP" ]; then
  ip link set eth0 up; ip addr add $UCIP dev eth0
  [ -n "$UCGW" ] && ip route add default via $UCGW
fi
# acpid exits when its default log file /var/log/acpid.log cannot be opened: log to console
acpid -c /etc/acpi -l /dev/console
echo "UCLOUD-LINUX-BOOT-OK uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) disks=$(ls /sys/block | tr '\n' ' ') nics=$(ls /sys/class/net | tr '\n' ' ') ip=$UCIP" > /dev/console
# A shell on the serial port, for serial consoles (ucloud vm console --serial); a new one
# when it exits.
(while true; do setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'; done) &
i=0
while true; do sleep 5; i=$((i+5)); echo "UCLOUD-HEARTBEAT $i" > /dev/console; done
EOS
chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -9) >"$W/initrd.img"
cp "$KROOT/boot/vmlinuz-$KVER" "$W/vmlinuz"

# --- disk: MBR + one bootable FAT16 partition at 1 MiB with SYSLINUX ------------------------
IMG="$W/linux.raw"
truncate -s "${SIZE_MB}M" "$IMG"
echo 'start=2048, type=6, bootable' | sfdisk -q "$IMG"
PSECT=$(( SIZE_MB * 2048 - 2048 ))   # partition size in 512-byte sectors
mkfs.vfat -F 16 -n UCLOUD --offset 2048 "$IMG" $(( PSECT / 2 )) >/dev/null
syslinux --offset $(( 2048 * 512 )) --install "$IMG"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$IMG" bs=440 count=1 conv=notrunc status=none
cat >"$W/syslinux.cfg" <<'EOS'
SERIAL 0 115200
DEFAULT linux
TIMEOUT 0
PROMPT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND console=ttyS0,115200 panic=-1 quiet
EOS
MTOOLS_SKIP_CHECK=1 mcopy -i "$IMG@@1M" "$W/syslinux.cfg" "$W/vmlinuz" "$W/initrd.img" ::/
qemu-img convert -f raw -O qcow2 "$IMG" "$W/linux.qcow2"

# --- publish: the raw image last, it is what freshness checks look at ----------------------
for f in vmlinuz initrd.img linux.qcow2 linux.raw; do mv -f "$W/$f" "$OUT/$f"; done
log "built $OUT/linux.raw ($SIZE_MB MiB), linux.qcow2, vmlinuz, initrd.img (kernel $KVER) in $(elapsed)s"
