# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ (sourced, not executed).
#
# The scripts start daemons for tests, the quickstart and benchmarks, and must stop exactly
# those again: a daemon is identified by a pid file *and* a check that the pid's command line
# is still the program we started with our own config (pids get reused). Nothing here looks a
# process up by name.

# Name used in log lines; each script sets it before sourcing.
: "${UC_PROG:=$(basename "$0")}"
UC_T0=$(date +%s.%N)

# log MSG...: timestamped (seconds since the script started) message on stderr.
log() {
  printf '[%s %6.2fs] %s\n' "$UC_PROG" \
    "$(awk -v a="$(date +%s.%N)" -v b="$UC_T0" 'BEGIN{print a-b}')" "$*" >&2
}

# die MSG...: log an error and exit 1. Scripts may define uc_on_die to print more context
# (log tails) first.
die() {
  log "ERROR: $*"
  if declare -F uc_on_die >/dev/null; then uc_on_die || true; fi
  exit 1
}

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root"
}

# need_cmds CMD...: fail early with the Debian package hint instead of half-way through.
need_cmds() {
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] || die "missing command(s): ${missing[*]} (run scripts/install-deps.sh)"
}

# elapsed: seconds since the script started, 2 decimals.
elapsed() {
  awk -v a="$(date +%s.%N)" -v b="$UC_T0" 'BEGIN{printf "%.2f", a-b}'
}

# pid_cmdline PID: the command line of PID with NULs as spaces ("" if gone).
pid_cmdline() {
  # The braces: a failed `<` is reported before a 2>/dev/null on the same command applies.
  { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true
}

# pid_matches PID REGEX: PID is alive, not a zombie, and its command line matches REGEX
# (extended regex). Zombies have an empty cmdline, so they never match.
pid_matches() {
  local pid=$1 re=$2 cl
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cl=$(pid_cmdline "$pid")
  [ -n "$cl" ] && grep -Eq -- "$re" <<<"$cl"
}

# read_pidfile FILE: print the pid in FILE (empty if missing/garbage).
read_pidfile() {
  local p=""
  if [ -r "$1" ]; then read -r p <"$1" 2>/dev/null || true; fi
  if [[ $p =~ ^[0-9]+$ ]]; then printf '%s\n' "$p"; fi
}

# stop_pids SECONDS REGEX PID...: TERM each PID that still matches REGEX, wait up to SECONDS
# for all of them to go, then KILL the rest (only those still matching REGEX).
# Prints the pids it signalled on stdout.
stop_pids() {
  local secs=$1 re=$2 pid end alive
  shift 2
  local pids=()
  for pid in "$@"; do
    if pid_matches "$pid" "$re" && kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  printf '%s\n' "${pids[@]}"
  end=$(( $(date +%s%1N) + secs * 10 ))   # deciseconds; SECS must be an integer
  while :; do
    alive=()
    for pid in "${pids[@]}"; do pid_matches "$pid" "$re" && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    [ "$(date +%s%1N)" -lt "$end" ] || break
    sleep 0.1
  done
  for pid in "${alive[@]}"; do
    log "pid $pid ignored TERM for ${secs}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
  sleep 0.2
}

# wait_until WHAT TIMEOUT CMD...: poll CMD (quietly) every 0.25 s until it succeeds, or die.
wait_until() {
  local what=$1 to=$2 end
  shift 2
  end=$(( $(date +%s) + to ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timeout (${to}s) waiting for $what"
    sleep 0.25
  done
  log "$what"
}

# check_dir_ours DIR MARKER: DIR may be (re)used if it does not exist, is empty, or holds our
# MARKER file. Refuses anything else, so a mistyped DIR never gets rm -rf'ed.
check_dir_ours() {
  local dir=$1 marker=$2
  [ -e "$dir" ] || return 0
  [ -d "$dir" ] || die "$dir exists and is not a directory"
  [ -e "$dir/$marker" ] && return 0
  [ -z "$(ls -A "$dir")" ] && return 0
  die "$dir is not empty and has no $marker marker: refusing to use it"
}

# re_escape STRING: STRING with extended-regex metacharacters escaped (for paths in patterns).
re_escape() {
  printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'
}

# lv_qemu_pids DIR: pids of the QEMU processes still running for the libvirtd of DIR
# (libvirtd-up.sh), whether that libvirtd runs or not. A pid counts only if it is named in
# DIR/run/qemu/<domain>.pid (libvirt's own pid files; driver.pid is libvirtd's), is a QEMU,
# and is in the UTS namespace recorded in DIR/utsns: QEMU shares libvirtd's UTS namespace, and
# a namespace keeps its number as long as one of its processes lives.
lv_qemu_pids() {
  local dir=$1 uts pf p
  uts=$(cat "$dir/utsns" 2>/dev/null) || return 0
  [ -n "$uts" ] || return 0
  for pf in "$dir"/run/qemu/*.pid; do
    if [ ! -e "$pf" ] || [ "${pf##*/}" = driver.pid ]; then continue; fi
    p=$(read_pidfile "$pf")
    [ -n "$p" ] || continue
    if pid_matches "$p" '^([^ ]*/)?qemu-system-' \
      && [ "$(readlink "/proc/$p/ns/uts" 2>/dev/null)" = "$uts" ]; then
      echo "$p"
    fi
  done
}
