#!/usr/bin/env bash
# Bring up a one-node Ceph cluster (Ceph 16 "pacific", Debian 12) in DIR, without systemd or
# containers: 1 mon, 1 mgr (optional), 1 bluestore OSD on a sparse file, cephx everywhere, an
# RBD pool, and a cephx user client.ucloud limited to RBD on that pool.
#
# usage: ceph-up.sh DIR
#
# env (all optional):
#   CEPH_PORT_BASE      shortcut for the ports below: mon v2 = BASE, mon v1 = BASE+1,
#                       mgr/osd range = BASE+2 .. BASE+99. Tests pick one free block.
#   CEPH_MON_V2_PORT    mon msgr2 port           (default 13300, or BASE)
#   CEPH_MON_V1_PORT    mon legacy msgr1 port    (default 16789, or BASE+1)
#   CEPH_PORT_MIN/MAX   range the mgr and OSD bind in (default 16800-16899, or BASE+2..BASE+99);
#                       they skip ports in use, so the range needs ~12 free ports
#   CEPH_OSD_SIZE       size of the sparse OSD file (default 10G)
#   CEPH_OBJECTSTORE    bluestore (default) or memstore
#   CEPH_POOL           RBD pool (default ucloud)   CEPH_POOL_PGS (default 32)
#   CEPH_CLIENT         cephx id of the restricted user (default ucloud -> client.ucloud)
#   CEPH_NO_MGR=1       no ceph-mgr (saves ~300 MiB; RBD works, `ceph health` turns WARN)
#   CEPH_FAST=0         drop the fast-convergence settings meant for throwaway clusters
#   CEPH_UP_TIMEOUT     seconds to wait for PGs active+clean (default 180)
#   CEPH_FRESH=1        wipe an existing (stopped) cluster in DIR instead of restarting it
#   CEPH_ADDR           the address every daemon binds and advertises (default 127.0.0.1);
#                       the multi-host test bed gives its switch bridge's, so that clients in
#                       other network namespaces reach the cluster
#
# Idempotent: on a DIR whose cluster is running it only re-checks and prints; on a DIR whose
# cluster is stopped (e.g. after a reboot) it restarts the daemons on the existing data; a
# half-running cluster is an error (run ceph-down.sh first). It refuses a non-empty DIR that
# it did not create.
#
# Prints the path of DIR/ceph.conf on stdout when the cluster is ready (progress goes to stderr).
# Result in DIR:
#   ceph.conf                     cluster config (CEPH_CONF); clients find their keyring as
#                                 DIR/ceph.client.<id>.keyring through `keyring = ...$name...`
#   ceph.client.admin.keyring     admin
#   ceph.client.ucloud.keyring    client.ucloud: mon 'profile rbd', osd/mgr 'profile rbd pool=POOL'
#   env.sh                        `source DIR/env.sh` exports CEPH_CONF and UCLOUD_CEPH_* vars
#   run/*.pid, log/*.log          daemons' pid files and logs
# Stop with: ceph-down.sh DIR
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=ceph-up
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
MARKER=.ucloud-ceph
CONF="$DIR/ceph.conf"
MON_ID=a
MGR_ID=x
OSD_ID=0   # first OSD of a fresh cluster always gets id 0

BASE=${CEPH_PORT_BASE:-}
if [ -n "$BASE" ]; then
  if ! [[ $BASE =~ ^[0-9]+$ ]] || [ "$BASE" -lt 1024 ] || [ "$BASE" -gt 65436 ]; then
    echo "ceph-up: CEPH_PORT_BASE must be 1024..65436" >&2
    exit 2
  fi
fi
V2=${CEPH_MON_V2_PORT:-${BASE:-13300}}
V1=${CEPH_MON_V1_PORT:-$(( ${BASE:-16788} + 1 ))}
PMIN=${CEPH_PORT_MIN:-$(( ${BASE:-16798} + 2 ))}
PMAX=${CEPH_PORT_MAX:-$(( ${BASE:-16800} + 99 ))}
OSD_SIZE=${CEPH_OSD_SIZE:-10G}
STORE=${CEPH_OBJECTSTORE:-bluestore}
POOL=${CEPH_POOL:-ucloud}
PGS=${CEPH_POOL_PGS:-32}
CLIENT=${CEPH_CLIENT:-ucloud}
NO_MGR=${CEPH_NO_MGR:-0}
TIMEOUT=${CEPH_UP_TIMEOUT:-180}
ADDR=${CEPH_ADDR:-127.0.0.1}

SHOW_LOGS=0   # set once daemons are being started: then a failure shows their logs
uc_on_die() {
  local f n
  [ "$SHOW_LOGS" = 1 ] || return 0
  for f in "$DIR/log/start.err" "$DIR"/log/*.log; do
    [ -s "$f" ] || continue
    case $f in *.err) n=10 ;; *) n=4 ;; esac
    echo "--- tail -n $n $f" >&2
    tail -n "$n" "$f" >&2
  done
}

need_root
need_cmds ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd uuidgen numfmt python3
C=(-c "$CONF" --connect-timeout 10)       # ceph CLI: fail instead of hanging on a dead mon
R=(timeout 30 rbd -c "$CONF")              # rbd has no --connect-timeout

# daemon_pid NAME: pid of our daemon NAME (mon.a, mgr.x, osd.0) if it is running, else fails.
# "Ours" = pid file in DIR/run and a command line naming this DIR's ceph.conf.
daemon_pid() {
  local pid
  pid=$(read_pidfile "$DIR/run/$1.pid")
  [ -n "$pid" ] && pid_matches "$pid" "^([^ ]*/)?ceph-(mon|mgr|osd) .*$(re_escape "$CONF")( |$)" && echo "$pid"
}

osd_up() {
  ceph "${C[@]}" osd stat -f json | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["num_up_osds"] >= 1 and d["num_in_osds"] >= 1 else 1)'
}
mgr_up() {
  ceph "${C[@]}" mgr stat -f json | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("available") else 1)'
}
pgs_clean() {
  ceph "${C[@]}" pg stat -f json | python3 -c '
import json, sys
d = json.load(sys.stdin); d = d.get("pg_summary", d)
n = d["num_pgs"]
c = sum(s["num"] for s in d["num_pg_by_state"] if s["name"] == "active+clean")
sys.exit(0 if n > 0 and c == n else 1)'
}
# The restricted client can really use RBD on the pool (what QEMU and ucloud will do).
client_ok() { "${R[@]}" --id "$CLIENT" -p "$POOL" ls; }

start_daemons() {  # start whichever of our daemons is not running (mon first)
  daemon_pid "mon.$MON_ID" >/dev/null || ceph-mon -c "$CONF" -i "$MON_ID" 2>>"$DIR/log/start.err" \
    || die "ceph-mon failed to start"
  [ "$NO_MGR" = 1 ] || daemon_pid "mgr.$MGR_ID" >/dev/null \
    || ceph-mgr -c "$CONF" -i "$MGR_ID" 2>>"$DIR/log/start.err" || die "ceph-mgr failed to start"
  if [ -d "$DIR/osd/ceph-$OSD_ID" ]; then
    daemon_pid "osd.$OSD_ID" >/dev/null || ceph-osd -c "$CONF" -i "$OSD_ID" 2>>"$DIR/log/start.err" \
      || die "ceph-osd failed to start"
  fi
}

wait_daemons() {
  wait_until "mon up" 30 ceph "${C[@]}" mon stat
  wait_until "osd.$OSD_ID up+in" 60 osd_up
  [ "$NO_MGR" = 1 ] || wait_until "mgr available" 60 mgr_up
}
wait_data() {
  if [ "$NO_MGR" = 1 ]; then
    # PG states are reported through the mgr: without it, readiness = the client can list
    wait_until "client.$CLIENT can use pool $POOL" "$TIMEOUT" client_ok
  else
    wait_until "all PGs active+clean" "$TIMEOUT" pgs_clean
    wait_until "client.$CLIENT can use pool $POOL" 30 client_ok
  fi
}

# --- an existing cluster in DIR? ------------------------------------------------------------
check_dir_ours "$DIR" "$MARKER"
if [ -e "$DIR/$MARKER" ] && [ -e "$CONF" ]; then
  # The marker records what the cluster was made with; that wins over the environment.
  old_no_mgr=$(sed -n 's/^no_mgr=//p' "$DIR/$MARKER")
  old_pool=$(sed -n 's/^pool=//p' "$DIR/$MARKER")
  old_client=$(sed -n 's/^client=//p' "$DIR/$MARKER")
  running=() stopped=()
  for d in "mon.$MON_ID" "mgr.$MGR_ID" "osd.$OSD_ID"; do
    if daemon_pid "$d" >/dev/null; then
      running+=("$d")
    elif [ "$d" != "mgr.$MGR_ID" ] || [ "$old_no_mgr" != 1 ]; then
      stopped+=("$d")
    fi
  done
  if [ ${#running[@]} -gt 0 ] && [ ${#stopped[@]} -gt 0 ]; then
    die "cluster in $DIR is half running (up: ${running[*]}; down: ${stopped[*]}); run ceph-down.sh $DIR (KEEP=1 keeps the data)"
  fi
  can_reuse=0
  if [ -n "$old_pool" ] && [ -n "$old_client" ] && [ -d "$DIR/osd/ceph-$OSD_ID" ]; then
    can_reuse=1
    NO_MGR=${old_no_mgr:-0} POOL=$old_pool CLIENT=$old_client
  fi
  if [ ${#running[@]} -gt 0 ]; then
    [ "$can_reuse" = 1 ] || die "$DIR/$MARKER lacks settings; run ceph-down.sh $DIR first"
    log "cluster in $DIR already running (${running[*]}); checking it"
    wait_daemons
    wait_data
    log "READY (already running): source $DIR/env.sh"
    echo "$CONF"
    exit 0
  fi
  if [ "${CEPH_FRESH:-0}" != 1 ] && [ "$can_reuse" = 1 ]; then
    # Ports etc. come from the existing ceph.conf; env settings for a new cluster are ignored.
    log "restarting the stopped cluster in $DIR (CEPH_FRESH=1 would wipe it instead)"
    mkdir -p "$DIR/run"
    SHOW_LOGS=1
    start_daemons
    wait_daemons
    wait_data
    log "READY (restarted in $(elapsed)s): source $DIR/env.sh"
    echo "$CONF"
    exit 0
  fi
  log "wiping the stopped cluster in $DIR"
  NO_MGR=${CEPH_NO_MGR:-0} POOL=${CEPH_POOL:-ucloud} CLIENT=${CEPH_CLIENT:-ucloud}
fi
rm -rf "$DIR"
mkdir -p "$DIR"/{run,log,crash,mon,mgr,osd}
# ceph-down.sh checks the marker before rm -rf; re-runs read the settings from it
printf 'no_mgr=%s\npool=%s\nclient=%s\n' "$NO_MGR" "$POOL" "$CLIENT" >"$DIR/$MARKER"

# --- config ------------------------------------------------------------------------------
FSID=$(uuidgen)
fast_settings=""
if [ "${CEPH_FAST:-1}" = 1 ]; then
  # Throwaway clusters: propose/report more often and skip the mkfs fsck. Without these the
  # cluster takes ~2x longer to report active+clean.
  fast_settings='paxos propose interval = 0.1
mgr stats period = 1
mgr tick period = 1
osd mon report interval = 1
bluestore fsck on mkfs = false
# only what we need: the default module list costs seconds and memory
mgr initial modules = iostat'
fi
cat >"$CONF" <<EOF
# Written by scripts/ceph-up.sh: one-node test cluster, everything on $ADDR.
[global]
fsid = $FSID
mon initial members = $MON_ID
mon host = [v2:$ADDR:$V2,v1:$ADDR:$V1]
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $DIR/run
crash dir = $DIR/crash
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
mon cluster log file = $DIR/log/\$cluster.log
ms bind port min = $PMIN
ms bind port max = $PMAX
# --- single OSD: no replication, crush picks OSDs not hosts ---
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
mon max pg per osd = 500
# --- small footprint ---
osd memory target = 939524096
bluestore cache autotune = true
# test machines often have fuller disks than Ceph likes
mon data avail warn = 2
mon data avail crit = 1
$fast_settings

[mon]
mon data = $DIR/mon/\$cluster-\$id
keyring = $DIR/mon/\$cluster-\$id/keyring

[mgr]
mgr data = $DIR/mgr/\$cluster-\$id
keyring = $DIR/mgr/\$cluster-\$id/keyring
public addr = $ADDR

[osd]
osd data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
public addr = $ADDR
cluster addr = $ADDR
osd objectstore = $STORE
bluestore block create = true
bluestore block size = $(numfmt --from=iec "$OSD_SIZE")
osd crush update on start = true
osd scrub during recovery = false

[client]
# \$name is client.admin, client.$CLIENT, ...: every client finds its own keyring here, so
# "rbd --id $CLIENT" and QEMU's "rbd:...:id=$CLIENT:conf=..." need no keyring option.
keyring = $DIR/ceph.\$name.keyring
# clients (CLI, QEMU, Python) must not write asok/log files into DIR
admin socket =
log file =
EOF

cat >"$DIR/env.sh" <<EOF
# source me: settings of the Ceph cluster started by scripts/ceph-up.sh in $DIR
export CEPH_CONF=$(printf %q "$CONF")
export UCLOUD_CEPH_POOL=$(printf %q "$POOL")
export UCLOUD_CEPH_CLIENT=$(printf %q "$CLIENT")
export UCLOUD_CEPH_KEYRING=$(printf %q "$DIR/ceph.client.$CLIENT.keyring")
export UCLOUD_CEPH_MON_HOST='[v2:$ADDR:$V2,v1:$ADDR:$V1]'
# for a libvirt <host name=... port=.../> element (plain ip:port; both ports were verified)
export UCLOUD_CEPH_MON_V1=$ADDR:$V1
EOF
export CEPH_CONF="$CONF"

# --- keys --------------------------------------------------------------------------------
MONKR="$DIR/mon.keyring"
ceph-authtool --create-keyring "$MONKR" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/ceph.client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
mkdir -p "$DIR/mgr/ceph-$MGR_ID"
ceph-authtool --create-keyring "$DIR/mgr/ceph-$MGR_ID/keyring" --gen-key -n "mgr.$MGR_ID" \
  --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$MONKR" --import-keyring "$DIR/ceph.client.admin.keyring" >/dev/null
ceph-authtool "$MONKR" --import-keyring "$DIR/mgr/ceph-$MGR_ID/keyring" >/dev/null
# client.ucloud goes into the initial mon keyring too, so it exists without an extra
# round-trip; `profile rbd` on mon and osd/mgr limited to the pool is what libvirt/QEMU,
# rbd and the rbd Python binding need (including clones and the blocklist on fencing).
ceph-authtool --create-keyring "$DIR/ceph.client.$CLIENT.keyring" --gen-key -n "client.$CLIENT" \
  --cap mon 'profile rbd' --cap osd "profile rbd pool=$POOL" --cap mgr "profile rbd pool=$POOL" >/dev/null
ceph-authtool "$MONKR" --import-keyring "$DIR/ceph.client.$CLIENT.keyring" >/dev/null
chmod 600 "$DIR"/*.keyring

# --- mon ---------------------------------------------------------------------------------
monmaptool --create --fsid "$FSID" --addv "$MON_ID" "[v2:$ADDR:$V2,v1:$ADDR:$V1]" \
  --enable-all-features --set-min-mon-release pacific "$DIR/monmap" >/dev/null
ceph-mon -c "$CONF" --mkfs -i "$MON_ID" --monmap "$DIR/monmap" --keyring "$MONKR" \
  2>"$DIR/log/mkfs-mon.err" || die "ceph-mon --mkfs failed: $(tail -n 5 "$DIR/log/mkfs-mon.err")"
log "mon mkfs done (ports v2 $V2, v1 $V1, mgr/osd $PMIN-$PMAX)"
SHOW_LOGS=1
ceph-mon -c "$CONF" -i "$MON_ID" 2>>"$DIR/log/start.err" || die "ceph-mon failed to start"
wait_until "mon up" 30 ceph "${C[@]}" mon stat

# --- mgr ---------------------------------------------------------------------------------
[ "$NO_MGR" = 1 ] || ceph-mgr -c "$CONF" -i "$MGR_ID" 2>>"$DIR/log/start.err" \
  || die "ceph-mgr failed to start"

# Pool creation needs only the mon: do it while the mgr starts and before the OSD is made.
ceph "${C[@]}" osd pool create "$POOL" "$PGS" "$PGS" >/dev/null 2>>"$DIR/log/start.err" \
  || die "pool create failed"
log "pool $POOL created"

# --- osd ---------------------------------------------------------------------------------
OSD_UUID=$(uuidgen)
OSD_SECRET=$(ceph-authtool --gen-print-key)
got=$(printf '{"cephx_secret": "%s"}' "$OSD_SECRET" | ceph "${C[@]}" osd new "$OSD_UUID" -i -)
[ "$got" = "$OSD_ID" ] || die "expected osd id $OSD_ID, the mon gave '$got'"
OD="$DIR/osd/ceph-$OSD_ID"
mkdir -p "$OD"
ceph-authtool --create-keyring "$OD/keyring" --name "osd.$OSD_ID" --add-key "$OSD_SECRET" >/dev/null
# (its log always has a few "_read_bdev_label failed" lines: expected on a new OSD)
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$DIR/log/mkfs-osd.err" 2>&1 \
  || die "ceph-osd --mkfs failed: $(tail -n 5 "$DIR/log/mkfs-osd.err")"
log "osd.$OSD_ID mkfs done ($STORE, $OSD_SIZE sparse)"
ceph-osd -c "$CONF" -i "$OSD_ID" 2>>"$DIR/log/start.err" || die "ceph-osd failed to start"

wait_until "osd.$OSD_ID up+in" 60 osd_up
[ "$NO_MGR" = 1 ] || wait_until "mgr available" 60 mgr_up

# --- rbd pool ----------------------------------------------------------------------------
"${R[@]}" pool init "$POOL" 2>>"$DIR/log/start.err" || die "rbd pool init failed"
log "rbd pool init $POOL"
wait_data
if [ "$NO_MGR" != 1 ]; then
  health=$(ceph "${C[@]}" health 2>&1 || true)
  [ "$health" = HEALTH_OK ] || log "note: health is not OK yet: $health"
fi
log "READY in $(elapsed)s: source $DIR/env.sh  (CEPH_CONF=$CONF, client.$CLIENT, pool $POOL)"
echo "$CONF"
