#!/usr/bin/env bash
# Remove the test bed that testbed-up.sh made in DIR: each host's libvirtd (with its guests)
# stopped by libvirtd-down.sh, its namespace deleted (with its veth, bridges and VXLAN
# devices), then the switch bridge. Only what DIR/bed.env names; safe to run again.
#
# usage: testbed-down.sh DIR
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
UC_PROG=testbed-down
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
HERE=$(dirname "${BASH_SOURCE[0]}")

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
[ -e "$DIR/bed.env" ] || { log "no bed in $DIR: nothing to do"; exit 0; }
[ -e "$DIR/.ucloud-testbed" ] || die "$DIR has no .ucloud-testbed marker: refusing"
need_root
# shellcheck disable=SC1091
. "$DIR/bed.env"
for h in ${BED_HOSTS:-h1 h2 h3 h4 h5 h6 h7 h8 h9}; do
  [ -d "$DIR/$h/lv" ] && bash "$HERE/libvirtd-down.sh" "$DIR/$h/lv"
  ns_var="BED_NS_$h"
  ns=${!ns_var:-}
  if [ -n "$ns" ] && ip netns list | grep -qx "$ns\( (id: [0-9]*)\)\?"; then
    ip netns del "$ns"
    log "deleted namespace $ns"
  fi
done
if ip link show "$BED_SWITCH" >/dev/null 2>&1; then
  ip link del "$BED_SWITCH"
  log "deleted switch $BED_SWITCH"
fi
rm -f "$DIR/bed.env"
log "done in $(elapsed)s"
