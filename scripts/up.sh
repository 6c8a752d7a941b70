#!/usr/bin/env bash
# Bring up a whole ucloud on this one machine, as root on Debian 12: etcd, a one-node Ceph
# cluster, a private libvirtd, and every ucloud daemon (this machine is the one host, and the
# router of its networks); then an administrator, a demo user with an SSH key pair made for
# it, images made through the scanners (a real Debian 12 guest with cloud-init, debian-12, and
# a tiny boot-sector guest, demo), a network demo-net (IPv6), and demo-vm: the Debian guest
# on demo-net with the demo user's key. It waits until demo-vm's SSH server answers and
# prints the command that logs in. Safe to run again: what runs is left running, what exists
# is reused. Stop it all with scripts/down.sh (--wipe: forget).
#
# env: UCLOUD_UP_DIR          where everything lives (default: .state/up in the repository)
#      UCLOUD_ACCEL           kvm, qemu (TCG), or unset: KVM if it boots the test Linux guest
#                             (some machines' /dev/kvm answers but fails real kernels), else TCG
#      UCLOUD_UP_QUICK        1: no Debian image and no network: demo-vm is the boot-sector
#                             guest, running in seconds (the Debian image takes 2-4 minutes to
#                             build the first time, and its VM 1.5-4.5 minutes to answer SSH
#                             under TCG)
#      UCLOUD_UP_SSH_TIMEOUT  seconds to wait for demo-vm's SSH server (default 900)
set -euo pipefail
UC_PROG=up
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
need_root

DIR=$(realpath -m "${UCLOUD_UP_DIR:-$REPO/.state/up}")
QUICK=${UCLOUD_UP_QUICK:-0}
ETCD_PORT=23790
API=127.0.0.1:5000
CONSOLE_PROXY=127.0.0.1:6080
CONSOLE_RELAY=127.0.0.1:6090
mkdir -p "$DIR"/{run,log,uploads/demo,host}
touch "$DIR/.ucloud-up"

log "installing what is missing (Debian packages, the venv)"
bash scripts/install-deps.sh >"$DIR/log/install.log" 2>&1 || die "install failed: see $DIR/log/install.log"
PATH=$REPO/.venv/bin:$PATH

# start NAME REGEX CMD...: start CMD in the background unless DIR/run/NAME.pid names a live
# process whose command line matches REGEX.
start() {
  local name=$1 re=$2 pid
  shift 2
  pid=$(read_pidfile "$DIR/run/$name.pid")
  if [ -n "$pid" ] && pid_matches "$pid" "$re"; then
    log "$name already runs (pid $pid)"
    return
  fi
  setsid "$@" >>"$DIR/log/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/$name.pid"
  log "$name started (pid $!, log $DIR/log/$name.log)"
}

# --- etcd, Ceph, libvirtd ---------------------------------------------------------------------
start etcd "etcd .*--data-dir=$(re_escape "$DIR")/etcd" etcd --name=ucloud \
  --data-dir="$DIR/etcd" \
  --listen-client-urls=http://127.0.0.1:$ETCD_PORT --advertise-client-urls=http://127.0.0.1:$ETCD_PORT \
  --listen-peer-urls=http://127.0.0.1:$((ETCD_PORT + 10)) \
  --initial-advertise-peer-urls=http://127.0.0.1:$((ETCD_PORT + 10)) \
  --initial-cluster=ucloud=http://127.0.0.1:$((ETCD_PORT + 10)) --log-level=warn --logger=zap
wait_until "etcd answers" 30 etcdctl --endpoints=127.0.0.1:$ETCD_PORT endpoint health

log "Ceph (one mon, one OSD on a sparse file)"
CEPH_NO_MGR=1 bash scripts/ceph-up.sh "$DIR/ceph" >>"$DIR/log/ceph-up.log" 2>&1 \
  || die "Ceph did not come up: see $DIR/log/ceph-up.log"
log "libvirtd (private, in its own namespaces)"
bash scripts/libvirtd-up.sh "$DIR/libvirtd" >>"$DIR/log/libvirtd-up.log" 2>&1 \
  || die "libvirtd did not come up: see $DIR/log/libvirtd-up.log"

# --- KVM, if it works ----------------------------------------------------------------------
bash scripts/build-guests.sh "$REPO/.state/guests" >>"$DIR/log/guests.log" 2>&1 \
  || die "could not build the test guests: see $DIR/log/guests.log"
if [ -z "${UCLOUD_ACCEL:-}" ] && [ ! -s "$DIR/accel" ]; then
  # /dev/kvm may answer (ucloud's own check) on a machine where KVM cannot run a real kernel
  # (nested virtualisation): a guest then stops at once ("KVM internal error"). Boot the test
  # Linux guest with KVM once to know.
  if [ -c /dev/kvm ] && GUEST_ACCEL=kvm bash scripts/guest-boot-check.sh \
    "$REPO/.state/guests/linux.raw" UCLOUD-LINUX-BOOT-OK 20 >>"$DIR/log/guests.log" 2>&1; then
    echo kvm >"$DIR/accel"
  else
    echo qemu >"$DIR/accel"
  fi
  log "accelerator: $(cat "$DIR/accel") (KVM $([ "$(cat "$DIR/accel")" = kvm ] && echo boots || echo does not boot) the test Linux guest)"
fi
ACCEL=${UCLOUD_ACCEL:-$(cat "$DIR/accel")}

# --- ucloud's daemons ---------------------------------------------------------------------
# The console's secrets are made once and kept: a new one would end every console page session.
[ -f "$DIR/console.secrets" ] || {
  umask 077
  printf 'UCLOUD_CONSOLE_RELAY_SECRET=%s\nUCLOUD_WEB_SECRET_KEY=%s\n' \
    "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$DIR/console.secrets"
}
cat >"$DIR/ucloud.env" <<EOF
UCLOUD_ETCD_ENDPOINTS=127.0.0.1:$ETCD_PORT
UCLOUD_API_BIND=$API
UCLOUD_HOSTNAME=node1
UCLOUD_LIBVIRT_URI=$(cat "$DIR/libvirtd/uri")
UCLOUD_ACCEL=$ACCEL
UCLOUD_STATE_DIR=$DIR/host
UCLOUD_VNC_DIR=/run/ucloud/vnc
UCLOUD_CEPH_CONF=$DIR/ceph/ceph.conf
UCLOUD_CEPH_KEYRING=$DIR/ceph/ceph.client.ucloud.keyring
UCLOUD_UPLOAD_ROOT=$DIR/uploads
UCLOUD_SHUTDOWN_TIMEOUT=10
UCLOUD_CONSOLE_URL=http://$API
UCLOUD_CONSOLE_WEBSOCKET_URL=ws://$CONSOLE_PROXY/
UCLOUD_CONSOLE_PROXY_BIND=$CONSOLE_PROXY
UCLOUD_CONSOLE_RELAY_BIND=$CONSOLE_RELAY
UCLOUD_WEB_COOKIE_SECURE=false
UCLOUD_NETWORK_ROUTER=true
$(cat "$DIR/console.secrets")
EOF
chmod 600 "$DIR/ucloud.env"
export UCLOUD_ENV_FILE=$DIR/ucloud.env
for daemon in api scheduler host console-relay console filescanner imagescanner; do
  command -v "ucloud-$daemon" >/dev/null || { log "ucloud-$daemon is not installed: skipped"; continue; }
  start "$daemon" "$(re_escape "$REPO")/\.venv/bin/ucloud-$daemon" "$REPO/.venv/bin/ucloud-$daemon"
done
wait_until "the API answers" 30 curl -sf "http://$API/openapi.json"

# --- users ---------------------------------------------------------------------------------
client_env() {  # client_env FILE USER REALM SEED
  printf 'UCLOUD_API_URL=http://%s\nUCLOUD_USER=%s\nUCLOUD_REALM=%s\nUCLOUD_SEED=%s\n' "$API" "$2" "$3" "$4" >"$1"
  chmod 600 "$1"
}
seed_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["seed"])'; }
if [ ! -f "$DIR/admin.env" ]; then
  seed=$(ucloud-api create-admin admin 2>>"$DIR/log/api.log" | seed_of) || die "could not create the administrator"
  client_env "$DIR/admin.env" admin ucloud-admin "$seed"
  log "administrator 'admin' created: $DIR/admin.env"
fi
if [ ! -f "$DIR/demo.env" ]; then
  seed=$(ucloud --config "$DIR/admin.env" user create demo --realm users --json | seed_of)
  client_env "$DIR/demo.env" demo users "$seed"
  log "user 'demo' created: $DIR/demo.env"
fi
demo() { ucloud --config "$DIR/demo.env" "$@"; }
# uuid_of KIND NAME: the uuid of the demo user's KIND (vm, file, image) named NAME, or nothing.
uuid_of() {
  demo "$1" list --json | python3 -c '
import json, sys
print(next((x["uuid"] for x in json.load(sys.stdin) if x["name"] == sys.argv[1]), ""))' "$2"
}
created() {  # created [NAME]: the demo user's image NAME (default demo) is CREATED
  demo image list --json | python3 -c '
import json, sys
sys.exit(0 if any(i["name"] == sys.argv[1] and i["status"] == "CREATED" for i in json.load(sys.stdin)) else 1)' "${1:-demo}"
}

# --- a demo image, through the scanners ------------------------------------------------------------
if [ -z "$(uuid_of image demo)" ]; then
  cp "$REPO/.state/guests/bootsector.qcow2" "$DIR/uploads/demo/demo.qcow2"
  log "uploaded demo.qcow2; waiting for the file scanner"
  file_found() { [ -n "$(uuid_of file demo.qcow2)" ]; }
  wait_until "the file scanner registered demo.qcow2" 60 file_found
  demo image create demo --file "$(uuid_of file demo.qcow2)" >/dev/null
fi
wait_until "the image scanner made the demo image" 120 created

# --- a real Debian 12 image with cloud-init ------------------------------------------------
if [ "$QUICK" != 1 ]; then
  log "building the Debian 12 image (cached after the first time: 2-4 minutes then)"
  bash scripts/guests/build-debian-image.sh "$REPO/.state/guests" >>"$DIR/log/guests.log" 2>&1 \
    || die "could not build the Debian image: see $DIR/log/guests.log"
  if [ -z "$(uuid_of image debian-12)" ]; then
    cp --sparse=always "$REPO/.state/guests/debian.raw" "$DIR/uploads/demo/debian-12.raw"
    debian_found() { [ -n "$(uuid_of file debian-12.raw)" ]; }
    wait_until "the file scanner registered debian-12.raw" 300 debian_found
    demo image create debian-12 --file "$(uuid_of file debian-12.raw)" >/dev/null
  fi
  wait_until "the image scanner made the debian-12 image" 600 created debian-12

  # The demo user's SSH key pair (kept here: down.sh --wipe forgets it with the rest) and a
  # network; this machine is its router, so it reaches the VMs on it.
  KEY=$DIR/demo-ssh-key
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C "demo@ucloud-up" -f "$KEY"
  named() {  # named KIND NAME: the demo user has a KIND (key, network) named NAME
    demo "$1" list --json | python3 -c '
import json, sys
items = json.load(sys.stdin)
sys.exit(0 if any(x["name"] == sys.argv[1] for x in items) else 1)' "$2"
  }
  named key demo || demo key add demo --file "$KEY.pub" >/dev/null
  named network demo-net || demo network create demo-net >/dev/null
fi

# --- a VM ----------------------------------------------------------------------------------
if [ -z "$(uuid_of vm demo-vm)" ]; then
  if [ "$QUICK" = 1 ]; then
    demo vm create demo-vm --image demo --cpu 1 --ram 128M --ssd 1G --wait --timeout 180
  else
    demo vm create demo-vm --image debian-12 --network demo-net --ssh-key demo \
      --cpu 1 --ram 512M --ssd 3G --wait --timeout 600
  fi
fi
vm=$(uuid_of vm demo-vm)
console=$DIR/host/console/$vm.log
debian_vm() {  # demo-vm is the Debian guest (not the boot sector of an earlier quick run)
  [ "$(demo vm status demo-vm --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"])')" \
    = "$(uuid_of image debian-12)" ]
}
LOGIN=""
if [ "$QUICK" != 1 ] && debian_vm; then
  if [ "$(demo vm status demo-vm --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')" = STOPPED ]; then
    demo vm start demo-vm --wait --timeout 300  # someone stopped it: SSH needs it running
  fi
  # The README's command, no questions asked: it checks the host keys the VM printed on its
  # console (it refuses until they are recorded), kept in this run's own state folder.
  ssh_demo() {
    XDG_STATE_HOME="$DIR" demo vm ssh debian@demo-vm -i "$KEY" -o BatchMode=yes \
      -o ConnectTimeout=5 -- "$@"
  }
  timeout=${UCLOUD_UP_SSH_TIMEOUT:-900}
  log "waiting for demo-vm's SSH server: 1.5-4.5 minutes after it starts under TCG (at most ${timeout}s; its console: $console)"
  wait_until "demo-vm answers SSH" "$timeout" ssh_demo true
  echo "--- ucloud vm ssh debian@demo-vm -- 'hostname; ip -br addr show eth0' ---"
  ssh_demo 'hostname; ip -br addr show eth0' 2>/dev/null
  LOGIN=".venv/bin/ucloud --config $DIR/demo.env vm ssh debian@demo-vm -i $KEY"
else
  [ "$QUICK" = 1 ] || log "demo-vm is not the Debian guest (an earlier UCLOUD_UP_QUICK=1 run made it): scripts/down.sh --wipe, then up.sh, to start over"
  wait_until "the VM's console shows it booted" 60 grep -q UCLOUD-BOOT-OK "$console"
  echo
  echo "--- console of demo-vm ($console) ---"
  head -c 300 "$console" | tr -d '\r'
  echo
fi
demo vm status demo-vm
cat <<EOF

ucloud runs on this machine ($DIR).${LOGIN:+
Log into demo-vm (Debian, on network demo-net) over SSH (add -- COMMAND to run one command):
  $LOGIN}
Try:
  export UCLOUD_CLIENT_CONFIG=$DIR/demo.env      # be the demo user
  .venv/bin/ucloud vm list
  .venv/bin/ucloud vm suspend demo-vm --wait && .venv/bin/ucloud vm resume demo-vm --wait
  .venv/bin/ucloud vm stop demo-vm --wait && .venv/bin/ucloud vm start demo-vm --wait
  tail -f $console
  .venv/bin/ucloud vm console demo-vm --serial   # its serial port, here (leave with Ctrl-])
  .venv/bin/ucloud token                         # a code for the console page's login
The console page: http://$API/console/ (log in as demo, realm users, with a code from \`ucloud token\`).
  cp some-disk.qcow2 $DIR/uploads/demo/ && .venv/bin/ucloud file list
  UCLOUD_CLIENT_CONFIG=$DIR/admin.env .venv/bin/ucloud host list
  .venv/bin/ucloud key add laptop --file ~/.ssh/id_ed25519.pub   # your SSH key for new VMs
  .venv/bin/ucloud network list
  .venv/bin/ucloud vm create deb --image debian-12 --network demo-net --cpu 1 --ram 1G --ssd 3G --wait
  .venv/bin/ucloud vm ssh debian@deb             # once its SSH server answers
Logs: $DIR/log/. Stop everything: scripts/down.sh (add --wipe to forget all state).
EOF
