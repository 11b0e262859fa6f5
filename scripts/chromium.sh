#!/usr/bin/env bash
# Headless Chromium for paymesh's operator console: the browser test, and
# operators taking screenshots of a console.
#
#   scripts/chromium.sh install
#       install Debian's chromium, NSS tools (certutil, pk12util) and
#       openssl if any is missing; print chromium's path
#   scripts/chromium.sh profile DIR CA CERT KEY ORIGIN...
#       make DIR a browser profile that trusts the region's CA and presents
#       the operator certificate CERT (with its key KEY) to each ORIGIN
#       (https://host:port) without asking. Run chromium with HOME=DIR and
#       --user-data-dir=DIR/chromium, e.g.
#         HOME=DIR chromium --headless --no-sandbox --user-data-dir=DIR/chromium \
#           --screenshot=console.png --window-size=1400,2000 https://127.0.0.1:9465/
#
# Only the path goes to stdout for `install`; progress and errors go to
# stderr. Running `install` again is harmless. Installing needs root and
# apt-get (a Debian-like system); without them the script says so and
# fails: a test that needs the browser never skips.

set -euo pipefail

say() { echo "chromium.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=lib/debian.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian.sh"

usage() {
    echo "usage: $0 install | profile DIR CA CERT KEY ORIGIN..." >&2
    exit 2
}

have_all() {
    command -v chromium >/dev/null && command -v certutil >/dev/null && command -v pk12util >/dev/null &&
        command -v openssl >/dev/null
}

install() {
    if have_all; then
        command -v chromium
        return
    fi
    one_install_at_a_time chromium
    if have_all; then
        command -v chromium
        return
    fi
    debian_install "the console's browser test" chromium libnss3-tools openssl
    have_all || die "installed, but chromium, certutil, pk12util or openssl is still not on PATH"
    command -v chromium
}

profile() {
    [[ $# -ge 5 ]] || usage
    local dir=$1 ca=$2 cert=$3 key=$4
    shift 4
    local file
    for file in "$ca" "$cert" "$key"; do
        [[ -r $file ]] || die "cannot read $file"
    done
    local origin
    for origin in "$@"; do
        [[ $origin =~ ^https://[^/[:space:]\"]+$ ]] || die "not an origin (https://host:port): $origin"
    done
    mkdir -p "$dir/.pki/nssdb" "$dir/chromium/Default"
    local db="sql:$dir/.pki/nssdb"
    # A database of the profile's own (Chromium reads $HOME/.pki/nssdb).
    [[ -f $dir/.pki/nssdb/cert9.db ]] || certutil -N -d "$db" --empty-password
    certutil -A -d "$db" -n "paymesh region CA" -t "C,," -i "$ca"
    local p12
    p12=$(mktemp "$dir/operator.XXXXXX.p12")
    openssl pkcs12 -export -in "$cert" -inkey "$key" -name "paymesh operator" -out "$p12" -passout pass:
    pk12util -i "$p12" -d "$db" -W "" >&2
    rm -f "$p12"
    # Present the certificate to these origins without asking (the setting
    # the AutoSelectCertificateForUrls policy writes; a headless browser
    # has no one to ask).
    local entries=() entry
    for origin in "$@"; do
        entries+=("\"$origin,*\": {\"setting\": {\"filters\": [{}]}}")
    done
    entry=$(IFS=,; echo "${entries[*]}")
    cat >"$dir/chromium/Default/Preferences" <<EOF
{"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {$entry}}}}}
EOF
    say "profile ready in $dir for ${*}"
}

case ${1:-} in
    install) install ;;
    profile) shift; profile "$@" ;;
    *) usage ;;
esac
