# Installing Debian packages for paymesh's scripts (sourced, not run). The
# sourcing script defines say and die.

# Hold a lock named NAME (in $TMPDIR) until the script ends, waiting at
# most 15 minutes: tests may ask for the same install at once, and the
# second finds the first's.
one_install_at_a_time() {
    exec 9>>"${TMPDIR:-/tmp}/paymesh-$1-install.lock"
    flock -w 900 9 || die "another install of $1 has run for 15 minutes"
}

# Install PACKAGE... with apt-get for WHAT (named in errors), retrying once
# after refreshing the package lists. Needs root and apt-get; without them,
# say what to run instead and fail (a test that needs the package never
# skips).
debian_install() {
    local what=$1
    shift
    [[ $(id -u) -eq 0 ]] || die "$what is not installed and installing it needs root: run 'apt-get install -y $*' as root, or run this script as root"
    command -v apt-get >/dev/null || die "$what is not installed and this is not a Debian-like system (no apt-get)"
    say "installing Debian's $* for $what"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$@" >&2; then
        say "apt-get install failed; refreshing the package lists and retrying"
        apt-get update >&2 || die "apt-get update failed: is the Debian mirror reachable?"
        apt-get install -y --no-install-recommends "$@" >&2 || die "apt-get install -y $* failed (see above)"
    fi
}
