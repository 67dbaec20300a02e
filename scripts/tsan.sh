#!/usr/bin/env bash
# ThreadSanitizer run of forge's concurrent parts (docs/sanitizers.md): the
# data loader's worker threads and the tokenizer's concurrent encode, in their
# own build tree (build-tsan/, clang 14, -DFORGE_SANITIZE=thread).
#   scripts/tsan.sh              # build what the tests need, run them
#   scripts/tsan.sh -V           # extra arguments go to ctest
# Environment: FORGE_TSAN_BUILD (default <clone>/build-tsan), FORGE_JOBS (2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FORGE_TSAN_BUILD:-$root/build-tsan}
jobs=${FORGE_JOBS:-2}

"$root/scripts/setup.sh" --no-build
# shellcheck source=scripts/sanitizer-env.sh
source "$root/scripts/sanitizer-env.sh"
forge_sanitized_tree "$build" "ThreadSanitizer" -DFORGE_SANITIZE=thread
echo "==> build (the tests that run threads, ninja -j$jobs)"
cmake --build "$build" -j "$jobs" --target test_data test_training
# One intra-op thread (as ctest sets for every test): LibTorch's OpenMP pool synchronises
# in code TSan cannot see, and would be reported as racing.
export OMP_NUM_THREADS=1
# The tests that run forge's own threads: the tokenizer's concurrent encode,
# the loader with workers (same batches as without, resume, bad rows met by
# workers), a manifest training with two workers.
tests='encode is thread-safe|the loader: same batches with or without threads|skip mode counts an unreadable image once per epoch|training from a manifest sees every sample once per epoch'
echo "==> ThreadSanitizer: $tests"
cd "$build"
# setarch -R (no ASLR): TSan in LLVM 14 cannot map its shadow when vm.mmap_rnd_bits > 28.
runner=()
if setarch "$(uname -m)" -R true 2>/dev/null; then runner=(setarch "$(uname -m)" -R); fi
"${runner[@]}" ctest -j "$jobs" --output-on-failure --timeout 1800 -R "$tests|generate_python_fixtures" "$@"
