#!/usr/bin/env bash
# Start a private libvirtd (system mode, as root, without systemd) whose configuration, state,
# logs and sockets all live in DIR, so that it never clashes with a libvirtd the machine
# already runs, nor with other instances (tests simulate several hypervisors this way).
#
# usage: libvirtd-up.sh DIR
#
# env (all optional):
#   LIBVIRTD_HOST_UUID  host UUID this libvirtd reports (default: a new one, kept in DIR so a
#                       restart keeps it). Two libvirtds need different ones to migrate.
#   LIBVIRTD_HOSTNAME   hostname inside its UTS namespace, what virConnectGetHostname()
#                       returns (default: lv-<basename of DIR>)
#   LIBVIRTD_LOG_OUTPUTS  libvirt log_outputs (default "3:file:DIR/log/libvirtd.log")
#   LIBVIRTD_TIMEOUT    seconds to wait for it to answer (default 60)
#   LIBVIRTD_CAPS_CACHE a directory shared by instances to seed QEMU's capability cache: a
#                       new libvirtd spends ~8 s probing QEMU before it first answers, one
#                       with a valid cache ~0.2 s. Seeded files are copied in before start and
#                       the seed is refreshed afterwards (atomic renames). libvirt validates
#                       each cached file (QEMU and libvirtd binaries, kernel, CPU) and
#                       re-probes when it is stale, so a stale seed costs only time.
#
# How: libvirt's paths (/etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt,
# /run/libvirt) are compiled in, so libvirtd runs in its own mount namespace where those paths
# are bind mounts of DIR/{etc,lib,cache,log,run}; the mounts are private (they do not
# propagate back to the host). Its UNIX socket directory is DIR/sock, outside those paths, so
# clients outside the namespace reach it as
#     qemu+unix:///system?socket=DIR/sock/libvirt-sock     (written to DIR/uri)
# It also gets its own UTS namespace (hostname) and host_uuid. QEMU processes it starts
# inherit both namespaces; they still see the rest of the host's filesystem (images, DIRs of
# ceph-up.sh, serial log paths) unchanged.
#
# qemu.conf: run QEMU as root with no security driver and no ownership changes (no
# libvirt-qemu user setup, no AppArmor/SELinux here), and write QEMU's stdout/stderr to
# DIR/log/qemu/<domain>.log directly (stdio_handler=file), so no virtlogd is needed; no
# per-domain mount namespace or cgroups (namespaces = [], cgroup_controllers = []: they only
# cost time here, and an operator's libvirtd can do the same). Debian's
# libvirt still looks up the libvirt-qemu account at start, before reading qemu.conf:
# install-deps.sh creates it.
#
# Idempotent: if the libvirtd of DIR runs, it only prints the URI; a stopped one is restarted
# with the same config, host UUID and domain definitions. It refuses a non-empty DIR that it
# did not create. Only root can connect (socket mode 0700, no auth beyond that).
# Stop with: libvirtd-down.sh DIR
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=libvirtd-up
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
MARKER=.ucloud-libvirtd
PIDFILE="$DIR/libvirtd.pid"
CONF="$DIR/etc/libvirtd.conf"
URI="qemu+unix:///system?socket=$DIR/sock/libvirt-sock"
TIMEOUT=${LIBVIRTD_TIMEOUT:-60}
# The bind-mounted paths inside the namespace, and their DIR subfolders.
MOUNTS=(/etc/libvirt:etc /var/lib/libvirt:lib /var/cache/libvirt:cache /var/log/libvirt:log /run/libvirt:run)

uc_on_die() {
  local f
  for f in "$DIR/log/libvirtd.log" "$DIR/log/start.err"; do
    [ -s "$f" ] || continue
    echo "--- tail -n 15 $f" >&2
    tail -n 15 "$f" >&2
  done
}

need_root
need_cmds libvirtd virsh unshare nsenter mount hostname uuidgen python3
# Debian's libvirt is built with qemu_user = qemu_group = "libvirt-qemu" and resolves both
# when the QEMU driver starts, before qemu.conf's user/group apply; without them the driver
# fails ("Failed to parse group 'libvirt-qemu'") and libvirtd exits. The account normally
# comes with libvirt-daemon-system, which we skip: create what is missing (idempotent).
if ! getent group libvirt-qemu >/dev/null; then
  groupadd -r libvirt-qemu && log "created system group libvirt-qemu"
fi
if ! getent passwd libvirt-qemu >/dev/null; then
  getent group kvm >/dev/null || groupadd -r kvm
  useradd -r -M -d /var/lib/libvirt -s /usr/sbin/nologin -g kvm libvirt-qemu
  log "created system user libvirt-qemu"
fi
case $DIR in
  /etc/libvirt* | /var/lib/libvirt* | /var/cache/libvirt* | /var/log/libvirt* | /run/libvirt*)
    die "DIR must not be under a libvirt path that gets bind-mounted: $DIR" ;;
esac
[ ${#DIR} -le 80 ] || die "DIR path too long for a UNIX socket path (max ~108 bytes incl. /sock/libvirt-admin-sock): $DIR"

RE="^([^ ]*/)?libvirtd .*--config $(re_escape "$CONF")( |$)"
running_pid() {
  local pid
  pid=$(read_pidfile "$PIDFILE")
  [ -n "$pid" ] && pid_matches "$pid" "$RE" && echo "$pid"
}
answers() { timeout 30 virsh -q -c "$URI" version; }
# wait_answers PID: wait until libvirtd answers; fail at once if it exits (it does when a
# driver fails to initialise), instead of waiting for the timeout.
wait_answers() {
  local pid=$1 end=$(( $(date +%s) + TIMEOUT ))
  until answers >/dev/null 2>&1; do
    pid_matches "$pid" "$RE" || die "libvirtd (pid $pid) exited during start-up"
    [ "$(date +%s)" -lt "$end" ] || die "timeout (${TIMEOUT}s) waiting for libvirtd on $URI"
    sleep 0.25
  done
  log "libvirtd answers on $URI"
}

check_dir_ours "$DIR" "$MARKER"
if pid=$(running_pid); then
  log "libvirtd of $DIR already running (pid $pid)"
  wait_answers "$pid"
  echo "$URI"
  exit 0
fi

# --- config (first start only; a restart keeps host UUID and definitions) ----------------
if [ ! -e "$CONF" ]; then
  mkdir -p "$DIR"
  touch "$DIR/$MARKER"   # libvirtd-down.sh checks it before rm -rf
  for m in "${MOUNTS[@]}"; do mkdir -p "$DIR/${m#*:}"; done
  mkdir -p "$DIR/sock"
  # client-side configs (libvirt.conf is read by libvirtd itself for peer-to-peer migration)
  for f in /etc/libvirt/libvirt.conf /etc/libvirt/libvirt-admin.conf; do
    [ -e "$f" ] && cp "$f" "$DIR/etc/"
  done
  host_uuid=${LIBVIRTD_HOST_UUID:-$(uuidgen)}
  [[ $host_uuid =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]] \
    || die "LIBVIRTD_HOST_UUID is not a UUID: $host_uuid"
  cat >"$CONF" <<EOF
# Written by scripts/libvirtd-up.sh for the private libvirtd in $DIR.
host_uuid = "$host_uuid"
unix_sock_dir = "$DIR/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "${LIBVIRTD_LOG_OUTPUTS:-3:file:$DIR/log/libvirtd.log}"
EOF
  cat >"$DIR/etc/qemu.conf" <<'EOF'
# Written by scripts/libvirtd-up.sh: QEMU as root, no security driver, no ownership games,
# no virtlogd (see the comments in the script).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
# Per-domain work libvirt can skip (measured: ~40 ms less wall per domain start, ~10 ms less
# libvirtd CPU): no private mount namespace (/dev copy) per QEMU, and no cgroups per domain
# (nothing here sets CPU/memory/IO tuning or reads cgroup statistics).
namespaces = []
cgroup_controllers = []
EOF
fi
host_uuid=$(sed -n 's/^host_uuid = "\(.*\)"$/\1/p' "$CONF")
HOSTNAME_NS=${LIBVIRTD_HOSTNAME:-lv-$(basename "$DIR")}
HOSTNAME_NS=$(printf '%s' "$HOSTNAME_NS" | tr -c 'A-Za-z0-9.-' '-' | cut -c1-63)

# Mount points must exist on the host for the bind mounts (libvirt would create the same
# empty directories itself when it runs there).
for m in "${MOUNTS[@]}"; do mkdir -p "${m%%:*}"; done
rm -f "$PIDFILE"

CAPS="$DIR/cache/qemu/capabilities"
SEED=${LIBVIRTD_CAPS_CACHE:-}
if [ -n "$SEED" ] && [ -d "$SEED" ] && ! compgen -G "$CAPS/*.xml" >/dev/null; then
  mkdir -p "$CAPS"
  if compgen -G "$SEED/*.xml" >/dev/null; then cp "$SEED"/*.xml "$CAPS/"; fi
fi

# `libvirtd --daemon` returns once it has daemonised and written its pid file; its drivers
# initialise afterwards, and if one fails libvirtd exits (wait_answers notices at once).
# The namespaces live as long as libvirtd, one of its QEMU children or their reaper does.
# REAPER: `python3 -I -c "$REAPER" CMD...` runs CMD (which daemonises, as `libvirtd --daemon`
# does) below a child subreaper and exits with CMD's status once CMD returns. The subreaper (a
# new session, stdio on /dev/null) reaps every orphan of CMD's process tree, i.e. libvirtd and
# its QEMUs (libvirt double-forks them), and exits once none is left. Why: libvirt's destroy
# waits until the QEMU pid has gone, i.e. has been reaped; orphans otherwise go to PID 1, and a
# container's or sandbox's PID 1 may reap late (~1.7 s here), which made every destroy (stop,
# delete) take ~1.5 s instead of ~0.2 s. If the subreaper dies, orphans go to PID 1 as before.
REAPER='
import ctypes, os, sys
r, w = os.pipe()
if os.fork():
    os.close(w)
    status = os.read(r, 8)
    sys.exit(int(status) if status else 1)
os.close(r)
os.setsid()
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    print("libvirtd-up: cannot become a child subreaper", file=sys.stderr)
pid = os.fork()
if pid == 0:
    os.close(w)
    os.execvp(sys.argv[1], sys.argv[1:])
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
os.write(w, str(code if code >= 0 else 128 - code).encode())
os.close(w)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
'
binds=""
for m in "${MOUNTS[@]}"; do binds+="mount --bind $(printf %q "$DIR/${m#*:}") ${m%%:*} && "; done
# Guests survive their libvirtd. If some of a previous libvirtd of DIR still run, the new one
# joins their UTS namespace (same hostname, and libvirtd-down.sh keeps finding them) and
# reconnects to them through their monitor sockets in DIR/lib; otherwise it gets a new one.
qp=$(lv_qemu_pids "$DIR")   # not "| head -1": SIGPIPE + pipefail would end the script
qp=${qp%%$'\n'*}
if [ -n "$qp" ]; then
  log "guests of a previous libvirtd of $DIR still run (QEMU pid $qp): joining their UTS namespace"
  enter=(nsenter --target "$qp" --uts --)
  new_uts=()
  set_hostname=":"
else
  enter=()
  new_uts=(--uts)
  set_hostname="hostname $(printf %q "$HOSTNAME_NS")"
fi
"${enter[@]}" unshare --mount "${new_uts[@]}" --propagation private -- \
  python3 -I -c "$REAPER" /bin/bash -c "
  set -e
  ${set_hostname}
  ${binds} exec libvirtd --daemon --pid-file $(printf %q "$PIDFILE") --config $(printf %q "$CONF")
" 2>>"$DIR/log/start.err" || die "libvirtd failed to start"

for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
pid=$(running_pid) || die "libvirtd did not write a pid file matching its config ($PIDFILE)"
# libvirtd-down.sh (lv_qemu_pids) uses this to tell this instance's QEMU processes from others'
readlink "/proc/$pid/ns/uts" >"$DIR/utsns"
log "libvirtd pid $pid (host_uuid $host_uuid, hostname $(nsenter --target "$pid" --uts hostname), $(cat "$DIR/utsns"))"
# The first call makes libvirtd probe QEMU's capabilities (~8 s here, then cached in
# DIR/cache): do it here so that the first test does not pay for it.
wait_answers "$pid"
if [ -n "$SEED" ] && compgen -G "$CAPS/*.xml" >/dev/null; then
  mkdir -p "$SEED"
  for f in "$CAPS"/*.xml; do
    cmp -s "$f" "$SEED/${f##*/}" && continue
    cp "$f" "$SEED/.${f##*/}.$$" && mv -f "$SEED/.${f##*/}.$$" "$SEED/${f##*/}"
  done
fi
echo "$URI" >"$DIR/uri"
printf 'export LIBVIRT_DEFAULT_URI=%q\n' "$URI" >"$DIR/env.sh"
log "READY in $(elapsed)s: source $DIR/env.sh (LIBVIRT_DEFAULT_URI)"
echo "$URI"
