# Sourced by scripts/sanitize.sh, scripts/fuzz.sh and scripts/tsan.sh (or by
# you, before running a sanitized binary): how the sanitizer runtimes behave in
# forge's runs (docs/sanitizers.md explains each choice).
_san_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../cmake/sanitizers" && pwd)
# protect_shadow_gap=0: CUDA's runtime maps memory where ASan's gap would be (GPU machines).
export ASAN_OPTIONS="detect_leaks=1:protect_shadow_gap=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$_san_dir/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TSAN_OPTIONS="suppressions=$_san_dir/tsan.supp:halt_on_error=1:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
command -v llvm-symbolizer-14 >/dev/null && export ASAN_SYMBOLIZER_PATH=$(command -v llvm-symbolizer-14)
unset _san_dir

# forge_sanitized_tree <build dir> <description> <cmake -D options...>:
# configures a clang 14 Release tree once (later calls leave it as it is).
forge_sanitized_tree() {
  local build=$1 what=$2
  shift 2
  [ -f "$build/build.ninja" ] && return 0
  echo "==> CMake configure ($build: clang 14, $what)"
  mkdir -p "$build"
  cmake -S "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER=clang++-14 -DFORGE_BUILD_BENCH=OFF \
    -DFORGE_PYTHON:FILEPATH="${FORGE_VENV:-$HOME/.cache/forge/venv-torch2.11.0}/bin/python" "$@" \
    >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; return 1; }
}
