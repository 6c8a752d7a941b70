#!/usr/bin/env bash
# End-to-end smoke test of the infrastructure scripts: a VM booted by libvirt from a Ceph RBD
# disk, authenticated with cephx as client.ucloud through a libvirt secret.
#
# usage: smoke-test.sh [WORKDIR]        (default: a new temporary directory, removed at the end)
# env:   GUESTS=DIR        built guests to use (default WORKDIR/guests, built if needed)
#        CEPH_PORT_BASE    as for ceph-up.sh (default 23300)
#        KEEP=1            leave everything running (prints how to stop it)
#
# Steps: build-guests.sh; ceph-up.sh; `rbd import` of bootsector.raw as client.ucloud, then
# snapshot + protect + clone (how ucloud makes VM disks); libvirtd-up.sh; a ceph secret in
# libvirt holding client.ucloud's key; a transient TCG domain whose disk is the clone through
# QEMU's rbd driver (the <disk> element documented in scripts/README.md); wait for
# UCLOUD-BOOT-OK in the serial log file; then libvirtd-down.sh and ceph-down.sh, and a check
# that none of the processes started is still alive.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=smoke-test
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

need_root
need_cmds rbd virsh ceph-authtool uuidgen
if [ $# -ge 1 ]; then
  mkdir -p "$1"; W=$(realpath "$1"); OWN_W=0
else
  W=$(mktemp -d /tmp/ucloud-smoke.XXXXXX); OWN_W=1
fi
GUESTS=${GUESTS:-$W/guests}
export CEPH_PORT_BASE=${CEPH_PORT_BASE:-23300}
CEPHDIR="$W/ceph"
LVDIR="$W/libvirtd"
DOM=smoke-$$
SERIAL="$W/$DOM.serial.log"

pids_started=()
teardown() {
  [ "${KEEP:-0}" = 1 ] && return 0
  "$HERE/libvirtd-down.sh" "$LVDIR" || true
  "$HERE/ceph-down.sh" "$CEPHDIR" || true
}
on_exit() {
  local rc=$?
  [ $rc -eq 0 ] || teardown
  exit $rc
}
trap on_exit EXIT

"$HERE/build-guests.sh" "$GUESTS"
"$HERE/ceph-up.sh" "$CEPHDIR" >/dev/null
# shellcheck source=/dev/null
. "$CEPHDIR/env.sh"
for pf in "$CEPHDIR"/run/*.pid; do pids_started+=("$(read_pidfile "$pf")"); done

# --- image and VM disk in RBD, as the restricted user --------------------------------------
RBD=(rbd --id "$UCLOUD_CEPH_CLIENT")
t=$(date +%s.%N)
"${RBD[@]}" import --no-progress "$GUESTS/bootsector.raw" "$UCLOUD_CEPH_POOL/img-bootsector"
"${RBD[@]}" snap create --no-progress "$UCLOUD_CEPH_POOL/img-bootsector@base"
"${RBD[@]}" snap protect "$UCLOUD_CEPH_POOL/img-bootsector@base"
"${RBD[@]}" clone "$UCLOUD_CEPH_POOL/img-bootsector@base" "$UCLOUD_CEPH_POOL/$DOM-disk"
"${RBD[@]}" resize --no-progress --size 64M "$UCLOUD_CEPH_POOL/$DOM-disk"
log "rbd import + snap + protect + clone + resize as client.$UCLOUD_CEPH_CLIENT: $(awk -v a="$(date +%s.%N)" -v b="$t" 'BEGIN{printf "%.2f", a-b}')s"

# --- libvirtd and the cephx secret ---------------------------------------------------------
"$HERE/libvirtd-up.sh" "$LVDIR" >/dev/null
URI=$(cat "$LVDIR/uri")
pids_started+=("$(read_pidfile "$LVDIR/libvirtd.pid")")
V=(timeout 60 virsh -q -c "$URI")
SECRET_UUID=$(uuidgen)
cat >"$W/secret.xml" <<EOF
<secret ephemeral='no' private='yes'>
  <uuid>$SECRET_UUID</uuid>
  <usage type='ceph'><name>client.$UCLOUD_CEPH_CLIENT</name></usage>
</secret>
EOF
"${V[@]}" secret-define "$W/secret.xml" >/dev/null
# the key goes through a file (0600), not the command line where ps would show it
( umask 077; ceph-authtool -p -n "client.$UCLOUD_CEPH_CLIENT" "$UCLOUD_CEPH_KEYRING" >"$W/key.b64" )
"${V[@]}" secret-set-value --secret "$SECRET_UUID" --file "$W/key.b64" >/dev/null
rm -f "$W/key.b64"

# --- the domain ----------------------------------------------------------------------------
DOMTYPE=qemu   # TCG: /dev/kvm may exist here but cannot run guests
MON_PORT=${UCLOUD_CEPH_MON_V1##*:}
cat >"$W/$DOM.xml" <<EOF
<domain type='$DOMTYPE'>
  <name>$DOM</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <auth username='$UCLOUD_CEPH_CLIENT'>
        <secret type='ceph' uuid='$SECRET_UUID'/>
      </auth>
      <source protocol='rbd' name='$UCLOUD_CEPH_POOL/$DOM-disk'>
        <host name='127.0.0.1' port='$MON_PORT'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$SERIAL'/><target port='0'/></serial>
    <console type='file'><source path='$SERIAL'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
t=$(date +%s.%N)
"${V[@]}" create "$W/$DOM.xml" >/dev/null
qpid=$(read_pidfile "$LVDIR/run/qemu/$DOM.pid")
pids_started+=("$qpid")
for _ in $(seq 300); do grep -qF UCLOUD-BOOT-OK "$SERIAL" 2>/dev/null && break; sleep 0.1; done
grep -qF UCLOUD-BOOT-OK "$SERIAL" || die "no UCLOUD-BOOT-OK in $SERIAL after 30 s"
log "UCLOUD-BOOT-OK from the RBD clone $(awk -v a="$(date +%s.%N)" -v b="$t" 'BEGIN{printf "%.2f", a-b}')s after virsh create (QEMU pid $qpid)"
# QEMU really has the image open as client.ucloud
"${RBD[@]}" status "$UCLOUD_CEPH_POOL/$DOM-disk" | grep -q 'client\.' \
  || die "rbd status shows no watcher on $DOM-disk"

if [ "${KEEP:-0}" = 1 ]; then
  trap - EXIT
  log "KEEP=1: left running. Stop with: $HERE/libvirtd-down.sh $LVDIR; $HERE/ceph-down.sh $CEPHDIR"
  exit 0
fi

# --- teardown and leftovers ----------------------------------------------------------------
trap - EXIT
teardown
sleep 0.5
left=()
for p in "${pids_started[@]}"; do
  # a zombie (state Z) is dead, only not yet reaped by its parent (init here)
  st=$(awk '/^State:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
  [ -n "$st" ] && [ "$st" != Z ] && left+=("$p")
done
[ ${#left[@]} -eq 0 ] || die "still running after teardown: ${left[*]}"
log "OK in $(elapsed)s: started and stopped pids ${pids_started[*]}; none left"
if [ "$OWN_W" = 1 ]; then rm -rf "$W"; fi
