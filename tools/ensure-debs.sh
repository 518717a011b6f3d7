#!/bin/sh
# Install the named Debian packages that are missing, and nothing else.
# apt must not start the daemons it installs (clamav-freshclam would try the internet, prometheus
# would bind :9090): a policy-rc.d that refuses is put in place for the install, then removed
# again if it was ours.
set -eu
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
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    ours=1
fi
cleanup() { [ -n "$ours" ] && rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT
# Update the package lists once per boot of the machine, not at every make.
if [ ! -e /var/lib/apt/lists/partial ] || [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit)" ] \
   || ! apt-get install -y -qq --no-install-recommends --dry-run $missing >/dev/null 2>&1; then
    apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
