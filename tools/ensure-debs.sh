#!/bin/sh
# Install the named Debian packages that are missing, and nothing else.
# apt must not start the daemons it installs (clamav-freshclam would try the internet, prometheus
# would bind :9090): a policy-rc.d that refuses is put in place for the install, then removed
# again if it was ours (Debian's container images ship their own, which stays).
# On failure, apt's own last lines are shown: its output is kept quiet only while all is well.
set -eu
policy="${POLICY_RC_D:-/usr/sbin/policy-rc.d}"     # overridable for tests/test_tools.py
missing=""
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    case "$status" in
        ii*) ;;
        *) missing="$missing $pkg" ;;
    esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "frontfilter: missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "frontfilter: installing Debian packages:$missing"
ours=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    ours=1
fi
log=$(mktemp)
# An `if`, not `[ ] && rm`: the EXIT trap's status becomes the script's, and a pre-existing
# policy-rc.d made a successful install exit 1.
cleanup() {
    if [ -n "$ours" ]; then rm -f "$policy"; fi
    rm -f "$log"
}
trap cleanup EXIT
fail() {
    echo "frontfilter: $1 failed; its last lines:" >&2
    tail -n 20 "$log" >&2
    exit 1
}
# Update the package lists once per boot of the machine, not at every make.
if [ ! -e /var/lib/apt/lists/partial ] || [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit)" ] \
   || ! apt-get install -y -qq --no-install-recommends --dry-run $missing >/dev/null 2>&1; then
    apt-get update -qq >"$log" 2>&1 || fail "apt-get update"
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >"$log" 2>&1 \
    || fail "apt-get install$missing"
