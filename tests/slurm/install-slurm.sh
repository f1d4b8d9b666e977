#!/usr/bin/env bash
# `make test` runs the Slurm tests on a real cluster built from Debian's slurm-wlm (tests/slurm/cluster.py).
# Install it when it is missing and we may: root, with apt-get. Otherwise the Slurm tests skip and say why;
# with ELMO_DIST_REQUIRE_SLURM=1 (CI) a failed install is an error.
set -uo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
    exit 0
fi
fail() {
    echo "install-slurm: $1" >&2
    [ "${ELMO_DIST_REQUIRE_SLURM:-0}" = 1 ] && exit 1
    echo "install-slurm: the Slurm tests will be skipped" >&2
    exit 0
}
[ "$(id -u)" -eq 0 ] || fail "Slurm is not installed and this is not root (apt-get install slurm-wlm to run its tests)"
command -v apt-get >/dev/null || fail "Slurm is not installed and there is no apt-get here"
echo "install-slurm: installing slurm-wlm from Debian for the Slurm tests (about 10 s)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || fail "apt-get update failed"
apt-get install -y -qq --no-install-recommends slurm-wlm >/dev/null || fail "apt-get install slurm-wlm failed"
