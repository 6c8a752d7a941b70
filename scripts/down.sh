#!/usr/bin/env bash
# Stop what scripts/up.sh started, by the pids it recorded: ucloud's daemons, libvirtd (and
# its VMs), Ceph, etcd. With --wipe, also delete all of its state (VMs, disks, users).
#
# env: UCLOUD_UP_DIR   as for up.sh (default: .state/up in the repository)
set -euo pipefail
UC_PROG=down
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
need_root

DIR=$(realpath -m "${UCLOUD_UP_DIR:-$REPO/.state/up}")
WIPE=0
[ "${1:-}" = --wipe ] && WIPE=1
[ -e "$DIR/.ucloud-up" ] || { log "nothing to stop: $DIR is not an up.sh directory"; exit 0; }

# Daemons first, so the host agent does not see its VMs vanish; then what they stand on.
for daemon in imagescanner filescanner console console-relay host scheduler api; do
  pid=$(read_pidfile "$DIR/run/$daemon.pid")
  [ -n "$pid" ] && stop_pids 30 "$(re_escape "$REPO")/\.venv/bin/ucloud-$daemon" "$pid" >/dev/null
  rm -f "$DIR/run/$daemon.pid"
done
log "ucloud daemons stopped"
KEEP=$((1 - WIPE))
export KEEP  # the down scripts keep their directories unless wiping
if [ -d "$DIR/libvirtd" ]; then bash scripts/libvirtd-down.sh "$DIR/libvirtd"; fi
if [ -d "$DIR/ceph" ]; then bash scripts/ceph-down.sh "$DIR/ceph"; fi
pid=$(read_pidfile "$DIR/run/etcd.pid")
[ -n "$pid" ] && stop_pids 20 "etcd .*--data-dir=$(re_escape "$DIR")/etcd" "$pid" >/dev/null
rm -f "$DIR/run/etcd.pid"
log "etcd stopped"
if [ $WIPE = 1 ]; then
  rm -rf "$DIR"
  log "state wiped ($DIR)"
fi
