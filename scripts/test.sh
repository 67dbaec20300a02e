#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh: packages, torch wheel, build), then runs
# the whole test suite with ctest. Exits non-zero when any test fails.
#   scripts/test.sh                 # everything
#   scripts/test.sh -R parity       # extra arguments go to ctest
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build=${FORGE_BUILD:-$root/build}
echo "==> tests (ctest -j${FORGE_JOBS:-2})"
cd "$build"
ctest -j "${FORGE_JOBS:-2}" --output-on-failure --timeout 1200 "$@"
