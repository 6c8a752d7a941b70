#!/usr/bin/env bash
# Stop the private libvirtd that libvirtd-up.sh started in DIR, with all its QEMU guests,
# and remove DIR.
#
# usage: libvirtd-down.sh DIR
# env:   KEEP=1  keep DIR (config, host UUID, persistent domain definitions, logs);
#                libvirtd-up.sh DIR starts the same libvirtd again
#
# Stopping libvirtd does NOT stop its guests: QEMU processes keep running (by design, so that
# libvirtd can be restarted or upgraded under running VMs), and they hold libvirtd's mount
# namespace alive. So this script:
#   1. destroys every running domain through virsh on DIR's URI (hard power-off);
#   2. stops libvirtd by the pid in DIR/libvirtd.pid (checked against its command line);
#   3. stops any QEMU of this DIR still alive (e.g. when libvirtd had died or did not
#      answer): pid from DIR/run/qemu/*.pid (libvirt's own pid files), checked to be a QEMU
#      in this libvirtd's UTS namespace (recorded in DIR/utsns);
#   4. removes DIR unless KEEP=1.
# Nothing is looked up by name. Safe to run again: a missing or stopped DIR is not an error.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=libvirtd-down
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
[ -d "$DIR" ] || { log "$DIR does not exist: nothing to do"; exit 0; }
[ -e "$DIR/.ucloud-libvirtd" ] || die "$DIR has no .ucloud-libvirtd marker (not made by libvirtd-up.sh): refusing"
CONF="$DIR/etc/libvirtd.conf"
URI="qemu+unix:///system?socket=$DIR/sock/libvirt-sock"
RE="^([^ ]*/)?libvirtd .*--config $(re_escape "$CONF")( |$)"

pid=$(read_pidfile "$DIR/libvirtd.pid")
destroyed=()
if [ -n "$pid" ] && pid_matches "$pid" "$RE"; then
  # 1. guests first, while libvirtd can still do it cleanly (and clean its state up)
  # (in parallel: each destroy waits ~1.5 s for its QEMU to exit)
  if names=$(timeout 30 virsh -q -c "$URI" list --name 2>&1); then
    declare -A jobs=()
    while read -r name; do
      [ -n "$name" ] || continue
      timeout 30 virsh -q -c "$URI" destroy "$name" >/dev/null 2>&1 &
      jobs[$!]=$name
    done <<<"$names"
    for j in "${!jobs[@]}"; do
      if wait "$j"; then
        destroyed+=("${jobs[$j]}")
      else
        log "virsh destroy ${jobs[$j]} failed; its QEMU is stopped by pid below"
      fi
    done
  else
    log "libvirtd pid $pid does not answer ($names); stopping guests by pid below"
  fi
  # 2. libvirtd itself
  stop_pids 15 "$RE" "$pid" >/dev/null
  log "stopped libvirtd pid $pid; destroyed ${#destroyed[@]} domain(s) [${destroyed[*]}]"
else
  log "libvirtd of $DIR is not running"
fi

# 3. QEMU processes libvirtd left behind (only if 1. could not destroy them): see
# lv_qemu_pids in lib/common.sh for how they are told from anybody else's.
mapfile -t qpids < <(lv_qemu_pids "$DIR")
if [ ${#qpids[@]} -gt 0 ]; then
  log "QEMU process(es) of this libvirtd still running: ${qpids[*]}; stopping them"
  stop_pids 10 '^([^ ]*/)?qemu-system-' "${qpids[@]}" >/dev/null
fi

# 4.
if [ "${KEEP:-0}" = 1 ]; then
  log "done in $(elapsed)s; kept $DIR"
else
  rm -rf "$DIR"
  log "done in $(elapsed)s; removed $DIR"
fi
