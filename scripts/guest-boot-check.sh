#!/usr/bin/env bash
# Boot a disk image under plain QEMU (no libvirt) until a marker appears on its serial port,
# then stop it. For checking test guests and for timing boots.
#
# usage: guest-boot-check.sh DISK MARKER [TIMEOUT_SECONDS]     (timeout default 90)
# env:   GUEST_ACCEL  tcg (default) or kvm
#        GUEST_MEM    MiB of RAM (default 256)
#        GUEST_SERIAL_LOG  keep the serial output in this file (default: a temp file, removed)
# Prints "<marker> after <seconds>s" and exits 0, or prints the serial output and exits 1.
#
# The disk is opened with -snapshot (writes go to a temporary overlay), so the image is never
# modified and may be in use elsewhere read-only. Format from the name: *.qcow2 -> qcow2, else
# raw. QEMU runs under `timeout`, so it cannot outlive TIMEOUT+5 s even if this script is
# killed; it is stopped by its own pid, never by name.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=guest-boot-check
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

if [ $# -lt 2 ] || [ $# -gt 3 ]; then echo "usage: $0 DISK MARKER [TIMEOUT]" >&2; exit 2; fi
DISK=$(realpath "$1")
MARKER=$2
TIMEOUT=${3:-90}
ACCEL=${GUEST_ACCEL:-tcg}
MEM=${GUEST_MEM:-256}
need_cmds qemu-system-x86_64 timeout
[ -r "$DISK" ] || die "cannot read $DISK"
case $DISK in *.qcow2) FMT=qcow2 ;; *) FMT=raw ;; esac

TMP=$(mktemp -d)
LOG=${GUEST_SERIAL_LOG:-$TMP/serial.log}
: >"$LOG"
qpid=""
cleanup() {
  # timeout(1) passes TERM on to QEMU and exits; both are our children
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill -TERM "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# -display none, not -nographic: -nographic implies -machine graphics=off, which makes SeaBIOS
# copy the BIOS screen (int 10h) to COM1 as well ("sercon"); the boot sector writes its marker
# both to COM1 and to the screen, so the two copies interleave on the serial port
# ("UC..ULCOLUODU-DB-O...") and the marker is never seen.
timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -m "$MEM" -display none \
  -monitor none -serial "file:$LOG" -no-reboot -snapshot \
  -drive "file=$DISK,format=$FMT,if=virtio" </dev/null >"$TMP/qemu.out" 2>&1 &
qpid=$!

while :; do
  if grep -qF -- "$MARKER" "$LOG"; then
    echo "$MARKER after $(elapsed)s ($(basename "$DISK"), $ACCEL)"
    exit 0
  fi
  if ! kill -0 "$qpid" 2>/dev/null; then
    wait "$qpid" && rc=0 || rc=$?
    qpid=""
    grep -qF -- "$MARKER" "$LOG" && { echo "$MARKER after $(elapsed)s ($(basename "$DISK"), $ACCEL)"; exit 0; }
    if [ "$rc" = 124 ]; then
      log "no '$MARKER' within ${TIMEOUT}s"
    else
      log "QEMU exited with $rc: $(cat "$TMP/qemu.out")"
    fi
    echo "--- serial output:" >&2
    tail -c 2000 "$LOG" >&2 || true
    echo >&2
    exit 1
  fi
  sleep 0.1
done
