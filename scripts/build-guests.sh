#!/usr/bin/env bash
# Build the two test guests into OUTDIR.
#
# usage: build-guests.sh [--check] [--debian] OUTDIR
#   --check   boot each built image under QEMU (TCG) and wait for its marker
#             (scripts/guest-boot-check.sh); exit 1 if one does not print it
#   --debian  also build the real Debian guest, debian.raw (guests/build-debian-image.sh:
#             1.5-4 minutes the first time, then cached by content)
# env:   FORCE=1       rebuild even if the outputs are up to date
#        GUEST_CACHE   where the Linux kernel package is cached (default OUTDIR/cache)
#        GUEST_ACCEL   accelerator for --check (tcg, default; or kvm)
#
# Outputs:
#   bootsector.bin     the 512-byte boot sector (nasm), from guests/bootsector.asm
#   bootsector.raw     that sector padded to a 1 MiB raw disk: boots in ~0.3 s, prints
#                      "UCLOUD-BOOT-OK" on COM1 then a "." every second; no ACPI, so a
#                      shutdown request does nothing (stop it with destroy)
#   bootsector.qcow2   the same as qcow2
#   linux.raw, linux.qcow2, vmlinuz, initrd.img
#                      a 48 MiB Linux (Debian kernel + busybox) from
#                      guests/build-linux-image.sh: prints "UCLOUD-LINUX-BOOT-OK" after
#                      15-25 s under TCG, a heartbeat every 5 s, powers off on ACPI shutdown
#
# Cache: a guest is rebuilt only when one of its outputs is missing or older than one of its
# sources (its asm/build script, and this script). Safe to run concurrently (a lock file in
# OUTDIR serialises builds); the kernel package is downloaded once per GUEST_CACHE.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=build-guests
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

CHECK=0 DEBIAN=0
while [ $# -gt 1 ]; do
  case $1 in
    --check) CHECK=1 ;;
    --debian) DEBIAN=1 ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 1 ] || { echo "usage: $0 [--check] [--debian] OUTDIR" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
OUT=$(realpath "$1")
# One build per OUTDIR at a time (parallel test workers may all call this): the others wait,
# then find the outputs up to date.
exec 9>"$OUT/.build.lock"
flock 9

# up_to_date "OUT1 OUT2 ..." SRC...: every output exists and is newer than every source
up_to_date() {
  local outs=$1 o s
  shift
  [ "${FORCE:-0}" = 1 ] && return 1
  for o in $outs; do
    [ -e "$OUT/$o" ] || return 1
    for s in "$@"; do [ "$OUT/$o" -nt "$s" ] || return 1; done
  done
}

# --- (a) boot sector -----------------------------------------------------------------------
BS_SRC=("$HERE/guests/bootsector.asm" "$HERE/build-guests.sh")
if up_to_date "bootsector.bin bootsector.raw bootsector.qcow2" "${BS_SRC[@]}"; then
  log "bootsector: up to date"
else
  need_cmds nasm qemu-img
  tmp=$(mktemp -d "$OUT/.bs.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  nasm -f bin "$HERE/guests/bootsector.asm" -o "$tmp/bootsector.bin"
  [ "$(stat -c %s "$tmp/bootsector.bin")" = 512 ] || die "bootsector.bin is not 512 bytes"
  # A 1 MiB disk rather than a bare sector: sizes stay whole MiB for RBD import/clone/resize.
  cp "$tmp/bootsector.bin" "$tmp/bootsector.raw"
  truncate -s 1M "$tmp/bootsector.raw"
  qemu-img convert -f raw -O qcow2 "$tmp/bootsector.raw" "$tmp/bootsector.qcow2"
  for f in bootsector.bin bootsector.qcow2 bootsector.raw; do mv -f "$tmp/$f" "$OUT/$f"; done
  rm -rf "$tmp"
  trap - EXIT
  log "bootsector: built $OUT/bootsector.{bin,raw,qcow2}"
fi

# --- (b) small Linux -----------------------------------------------------------------------
LX_SRC=("$HERE/guests/build-linux-image.sh" "$HERE/build-guests.sh")
if up_to_date "linux.raw linux.qcow2 vmlinuz initrd.img" "${LX_SRC[@]}"; then
  log "linux: up to date"
else
  "$HERE/guests/build-linux-image.sh" "$OUT"
  # mtimes: make every output newer than the sources even on coarse-timestamp filesystems
  touch "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/linux.qcow2" "$OUT/linux.raw"
fi

if [ "$DEBIAN" = 1 ]; then
  "$HERE/guests/build-debian-image.sh" "$OUT"
fi

if [ "$CHECK" = 1 ]; then
  "$HERE/guest-boot-check.sh" "$OUT/bootsector.raw" UCLOUD-BOOT-OK 30
  "$HERE/guest-boot-check.sh" "$OUT/bootsector.qcow2" UCLOUD-BOOT-OK 30
  "$HERE/guest-boot-check.sh" "$OUT/linux.raw" UCLOUD-LINUX-BOOT-OK 120
  "$HERE/guest-boot-check.sh" "$OUT/linux.qcow2" UCLOUD-LINUX-BOOT-OK 120
fi
log "done in $(elapsed)s: $OUT"
