#!/usr/bin/env bash
# Prometheus and promtool for paymesh's monitoring tests and for operators
# trying the rules and the dashboard locally.
#
#   scripts/prometheus.sh install   install Debian's prometheus package (the
#                                   server and promtool) if promtool is not
#                                   found; print promtool's path
#   scripts/prometheus.sh check     promtool check rules and test rules on
#                                   deploy/monitoring (what CI runs)
#
# Only the path goes to stdout for `install`; progress and errors go to
# stderr. Running `install` again is harmless. Installing needs root and
# apt-get (a Debian-like system); without them the script says so and
# fails: a test that needs Prometheus never skips.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { echo "prometheus.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=lib/debian.sh
source "$repo/scripts/lib/debian.sh"

usage() {
    echo "usage: $0 install|check" >&2
    exit 2
}

install() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        command -v promtool
        return
    fi
    one_install_at_a_time prometheus
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        command -v promtool
        return
    fi
    # The package's own service is not wanted (no init system in a
    # container, and the tests start their own server).
    debian_install "Prometheus (the server and promtool)" prometheus
    command -v promtool >/dev/null || die "prometheus installed, but still no promtool on PATH"
    command -v promtool
}

check() {
    local promtool
    promtool=$(install)
    "$promtool" check rules "$repo/deploy/monitoring/alerts.yml" >&2
    "$promtool" test rules "$repo/deploy/monitoring/alerts.test.yml" >&2
    say "rules checked and their unit tests pass"
}

case ${1:-} in
    install) install ;;
    check) check ;;
    *) usage ;;
esac
