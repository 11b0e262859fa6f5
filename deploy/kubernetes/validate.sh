#!/usr/bin/env bash
# Generate the manifests of a three-region install with gen.py and validate
# every one offline against the Kubernetes version below, strictly (an
# unknown field is an error), with kubernetes-validate from PyPI. Its tools
# live in a virtual environment of their own (target/k8s-venv, or
# PAYMESH_K8S_VENV), made on first use.
#
#   deploy/kubernetes/validate.sh mesh OUT      generate us-west, cn-east and
#                                               ap-southeast under OUT and
#                                               validate them
#   deploy/kubernetes/validate.sh files FILE... validate these files
#   deploy/kubernetes/validate.sh gen ARGS...   run gen.py (see its --help)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$repo/deploy/kubernetes"
venv=${PAYMESH_K8S_VENV:-$repo/target/k8s-venv}
# The oldest Kubernetes the manifests support: the pod-index label the
# nodes read their ordinal from is stable from 1.32.
KUBERNETES_VERSION=1.32.0
KUBERNETES_VALIDATE=1.37.0
PYYAML=6.0.4
REGIONS=(us-west cn-east ap-southeast)

say() { echo "validate.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

tools() {
    # One setup at a time (tests may call this concurrently).
    mkdir -p "$(dirname "$venv")"
    exec 9>>"$venv.lock"
    flock -w 600 9 || die "another validate.sh has set up $venv for 10 minutes"
    if [[ ! -x $venv/bin/kubernetes-validate ]]; then
        command -v python3 >/dev/null || die "python3 is required"
        say "making $venv with kubernetes-validate $KUBERNETES_VALIDATE and PyYAML $PYYAML from PyPI"
        python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE" "PyYAML==$PYYAML" >&2 \
            || die "pip install failed: is PyPI reachable?"
    fi
    exec 9>&-
}

validate() {
    tools
    "$venv/bin/kubernetes-validate" --kubernetes-version "$KUBERNETES_VERSION" --strict "$@"
}

gen() {
    tools
    "$venv/bin/python" "$here/gen.py" "$@"
}

mesh() {
    local out=$1 region other remotes
    rm -rf "$out"
    for region in "${REGIONS[@]}"; do
        remotes=()
        for other in "${REGIONS[@]}"; do
            [[ $other == "$region" ]] && continue
            remotes+=(--remote "$other=paymesh-interregion.$other.example:9443")
        done
        gen --region "$region" --image paymesh:0.1.0 "${remotes[@]}" --out "$out" >&2
    done
    validate "$out"/*/*.yaml
    say "every manifest of ${REGIONS[*]} is valid for Kubernetes $KUBERNETES_VERSION"
}

case ${1:-} in
    mesh) [[ $# -eq 2 ]] || die "usage: $0 mesh OUT"; mesh "$2" ;;
    files) shift; [[ $# -ge 1 ]] || die "usage: $0 files FILE..."; validate "$@" ;;
    gen) shift; gen "$@" ;;
    *) die "usage: $0 mesh OUT | files FILE... | gen ARGS..." ;;
esac
