#!/usr/bin/env bash
# Stop what scripts/up.sh started, by the pids it recorded: ucloud's daemons, libvirtd (and
# its VMs), the network router's dnsmasqs and the networks' bridges, Ceph, etcd. With --wipe,
# also delete all of its state (VMs, disks, users, the demo user's SSH key pair).
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

# The networks' data plane, which outlives the host agent as its VMs do (the agent makes it
# again when it starts): this machine routes every network, so each has a folder in
# host/gateway/<VXLAN id> with its dnsmasq's pid file, and a bridge ucbr<id> (with a VXLAN
# device ucvx<id> if the host had an underlay address).
for folder in "$DIR"/host/gateway/*/; do
  [ -d "$folder" ] || continue
  vni=$(basename "$folder")
  [[ $vni =~ ^[0-9]+$ ]] || continue
  pid=$(read_pidfile "$folder/dnsmasq.pid")
  [ -n "$pid" ] && stop_pids 10 "dnsmasq --conf-file=$(re_escape "${folder}dnsmasq.conf")" "$pid" >/dev/null
  for link in "ucvx$vni" "ucbr$vni"; do
    if ip link show "$link" >/dev/null 2>&1; then ip link del "$link"; fi
  done
  log "network $vni: its dnsmasq stopped, its bridge removed"
done
# The agent's nftables tables (port security), once no tap they name is left: another agent
# of this machine's root namespace (a test's) would share them.
for table in "bridge ucloud" "inet ucloud"; do
  # shellcheck disable=SC2086  # table is "FAMILY NAME"
  rules=$(nft list table $table 2>/dev/null) || continue
  busy=0
  while read -r tap; do
    if [ -n "$tap" ] && ip link show "$tap" >/dev/null 2>&1; then busy=1; fi
  done < <(grep -Eo 'uct[0-9a-f]{12}' <<<"$rules" | sort -u)
  # shellcheck disable=SC2086
  if [ $busy = 0 ]; then nft delete table $table && log "nftables table $table removed"; fi
done
if [ -d "$DIR/ceph" ]; then bash scripts/ceph-down.sh "$DIR/ceph"; fi
pid=$(read_pidfile "$DIR/run/etcd.pid")
[ -n "$pid" ] && stop_pids 20 "etcd .*--data-dir=$(re_escape "$DIR")/etcd" "$pid" >/dev/null
rm -f "$DIR/run/etcd.pid"
log "etcd stopped"
if [ $WIPE = 1 ]; then
  rm -rf "$DIR"
  log "state wiped ($DIR)"
fi
