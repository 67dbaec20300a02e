#!/usr/bin/env bash
# forge under AddressSanitizer + UndefinedBehaviorSanitizer (clang 14), in its
# own build tree (build-san/), with the libFuzzer targets (docs/sanitizers.md).
#   scripts/sanitize.sh                 # build everything, run the whole CPU ctest suite
#   scripts/sanitize.sh -R tokenizer    # extra arguments go to ctest
#   scripts/sanitize.sh --ci            # CI's bounded run: each fuzz target 30 s,
#                                       # then the fast sanitizer subset (config, tokenizer, data, video)
#   scripts/sanitize.sh --configure     # only configure build-san (scripts/fuzz.sh uses it)
# Environment: FORGE_SAN_BUILD (default <clone>/build-san), FORGE_JOBS (2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FORGE_SAN_BUILD:-$root/build-san}
jobs=${FORGE_JOBS:-2}
mode=full
case "${1:-}" in
  --ci) mode=ci; shift ;;
  --configure) mode=configure; shift ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

"$root/scripts/setup.sh" --no-build
# shellcheck source=scripts/sanitizer-env.sh
source "$root/scripts/sanitizer-env.sh"
forge_sanitized_tree "$build" "ASan + UBSan, fuzz targets" -DFORGE_SANITIZE=address,undefined -DFORGE_FUZZ=ON
[ "$mode" = configure ] && exit 0

cd "$build"
if [ "$mode" = ci ]; then
  # The subset: the parsers' own tests plus the host's config and CLI checks,
  # and the report and TensorBoard writers with their readers.
  subset='^test_foundation:|^test_data:|^test_reporting:'
  echo "==> build (fuzz targets and the subset's tests, ninja -j$jobs)"
  cmake --build . -j "$jobs" --target fuzz_targets test_foundation test_data test_reporting
  "$root/scripts/fuzz.sh" --time "${FORGE_FUZZ_CI_SECONDS:-30}"
  echo "==> sanitizer subset (ctest -R '$subset')"
  ctest -j "$jobs" --output-on-failure --timeout 1200 -R "$subset|generate_python_fixtures" "$@"
else
  echo "==> build (ninja -j$jobs)"
  cmake --build . -j "$jobs"
  echo "==> whole CPU suite under ASan + UBSan (ctest -LE cuda)"
  ctest -j "$jobs" --output-on-failure --timeout 2400 -LE cuda "$@"
fi
