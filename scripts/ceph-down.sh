#!/usr/bin/env bash
# Stop the Ceph cluster that ceph-up.sh started in DIR, and remove DIR.
#
# usage: ceph-down.sh DIR
# env:   KEEP=1  stop the daemons but keep DIR (ceph-up.sh DIR restarts the same cluster)
#
# Only pids named in DIR/run/*.pid whose command line is a ceph daemon started with
# DIR/ceph.conf are signalled; nothing is looked up by name. Safe to run again: a DIR that is
# gone or already stopped is not an error. Refuses a DIR without ceph-up.sh's marker.
#
# OSDs are stopped first, then the mgr, then the mon: an OSD that gets TERM after the mon is
# gone waits osd_mon_shutdown_timeout (5 s) for an acknowledgement that never comes.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=ceph-down
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
[ -d "$DIR" ] || { log "$DIR does not exist: nothing to do"; exit 0; }
[ -e "$DIR/.ucloud-ceph" ] || die "$DIR has no .ucloud-ceph marker (not made by ceph-up.sh): refusing"

RE="^([^ ]*/)?ceph-(mon|mgr|osd) .*$(re_escape "$DIR/ceph.conf")( |$)"
stopped=()
stop_group() {  # stop_group GLOB: all daemons of one kind, in parallel
  local pf pid pids=()
  for pf in "$DIR"/run/$1.pid; do
    [ -e "$pf" ] || continue
    pid=$(read_pidfile "$pf")
    [ -n "$pid" ] && pids+=("$pid")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local out
  out=$(stop_pids 10 "$RE" "${pids[@]}")
  [ -z "$out" ] || mapfile -t -O "${#stopped[@]}" stopped <<<"$out"
}
stop_group 'osd.*'
stop_group 'mgr.*'
stop_group 'mon.*'

if [ "${KEEP:-0}" = 1 ]; then
  log "stopped ${#stopped[@]} daemon(s) [${stopped[*]}] in $(elapsed)s; kept $DIR"
else
  rm -rf "$DIR"
  log "stopped ${#stopped[@]} daemon(s) [${stopped[*]}] in $(elapsed)s; removed $DIR"
fi
