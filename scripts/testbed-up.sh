#!/usr/bin/env bash
# A multi-host test bed on one machine: N simulated hypervisors, each a network namespace
# with an underlay address on a veth to a test switch (a Linux bridge), and its own private
# libvirtd started inside the namespace (so its VMs' tap devices, bridges and VXLAN devices
# live there). The switch bridge has an address in the root namespace: etcd and Ceph listen
# on it (CEPH_ADDR=... scripts/ceph-up.sh) so that every namespace reaches them.
#
# usage: testbed-up.sh DIR [N]        (N hosts, default 2)
#
# Every name is made unique per bed (a random id) and recorded in DIR/bed.env; the switch's
# subnet is a /24 of 198.18.0.0/15 (RFC 2544, benchmarking) that no route of this machine
# uses. Nothing else of the machine is touched. Stop with: testbed-down.sh DIR
#
# DIR/bed.env (source it):
#   BED_ID, BED_SWITCH (bridge), BED_ADDR (its address), BED_HOSTS ("h1 h2 ..."), and per
#   host hI: BED_NS_hI (namespace), BED_UNDERLAY_hI (address), BED_LIBVIRT_hI (libvirt URI).
# Then, for example, a host agent:
#   ip netns exec "$BED_NS_h1" env UCLOUD_HOSTNAME=h1 UCLOUD_LIBVIRT_URI="$BED_LIBVIRT_h1" \
#     UCLOUD_NETWORK_UNDERLAY="$BED_UNDERLAY_h1" UCLOUD_ETCD_ENDPOINTS="$BED_ADDR:2379" ucloud-host
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=testbed-up
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
HERE=$(dirname "${BASH_SOURCE[0]}")

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 DIR [N]" >&2; exit 2; }
DIR=$(realpath -m "$1")
N=${2:-2}
[[ $N =~ ^[1-9]$ ]] || die "N must be 1 to 9"
need_root
need_cmds ip python3
[ -e "$DIR/bed.env" ] && die "$DIR already holds a bed (testbed-down.sh $DIR first)"
mkdir -p "$DIR"
touch "$DIR/.ucloud-testbed"

ID=$(python3 -c 'import secrets; print(secrets.token_hex(3))')
SWITCH="ucs$ID"
# a /24 of 198.18.0.0/15 that no route of this machine covers
NET=$(python3 - <<'PY'
import ipaddress, random, subprocess
used = []
for line in subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                           text=True).stdout.splitlines():
    word = line.split()[0] if line.split() else ""
    if word in ("default", "broadcast", "local", "unreachable"):
        word = line.split()[1] if word != "default" else "0.0.0.0/0"
    try:
        used.append(ipaddress.ip_network(word, strict=False))
    except ValueError:
        pass
candidates = [n for n in ipaddress.ip_network("198.18.0.0/15").subnets(new_prefix=24)
              if not any(n.overlaps(u) and u.prefixlen > 0 for u in used)]
print(random.choice(candidates).network_address)
PY
)
BASE=${NET%.*}
ADDR="$BASE.1"

{
  echo "# written by scripts/testbed-up.sh; scripts/testbed-down.sh removes what it names"
  echo "BED_ID=$ID"
  echo "BED_DIR=$DIR"
  echo "BED_SWITCH=$SWITCH"
  echo "BED_ADDR=$ADDR"
  echo "BED_PREFIX=24"
} >"$DIR/bed.env"

ip link add "$SWITCH" type bridge
ip link set "$SWITCH" up
ip addr add "$ADDR/24" dev "$SWITCH"
log "switch $SWITCH $ADDR/24"

hosts=()
for i in $(seq "$N"); do
  h="h$i"
  ns="uc$ID-$h"
  port="uc$ID$h"          # the switch's side of the host's veth (<= 15 bytes)
  underlay="$BASE.$((10 + i))"
  ip netns add "$ns"
  echo "BED_NS_$h=$ns" >>"$DIR/bed.env"
  ip link add "$port" type veth peer name ul0 netns "$ns"
  ip link set "$port" master "$SWITCH" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$underlay/24" dev ul0
  ip -n "$ns" link set ul0 up
  echo "BED_UNDERLAY_$h=$underlay" >>"$DIR/bed.env"
  mkdir -p "$DIR/$h"
  uri=$(LIBVIRTD_HOSTNAME="$h" ip netns exec "$ns" bash "$HERE/libvirtd-up.sh" "$DIR/$h/lv")
  echo "BED_LIBVIRT_$h='$uri'" >>"$DIR/bed.env"
  hosts+=("$h")
  log "host $h: namespace $ns, underlay $underlay, libvirtd $uri"
done
echo "BED_HOSTS='${hosts[*]}'" >>"$DIR/bed.env"
log "READY in $(elapsed)s: source $DIR/bed.env"
echo "$DIR/bed.env"
