#!/usr/bin/env bash
# forge setup: installs every dependency (Debian packages, the torch wheel and
# the Python fixture generators), then configures and builds forge.
#
# Idempotent: a second run with everything present goes straight to the
# (incremental) build. Caches live outside the clone so a fresh clone reuses
# them:
#   FORGE_VENV   Python virtual environment holding torch==2.11.0
#                (default: ~/.cache/forge/venv-torch2.11.0)
#   CCACHE_DIR   compiler cache (default: ccache's own, ~/.cache/ccache)
#   FORGE_BUILD  build directory (default: <clone>/build)
#   FORGE_JOBS   parallel build jobs (default: 2)
#
# Usage: scripts/setup.sh [--no-build]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${FORGE_VENV:-$HOME/.cache/forge/venv-torch2.11.0}
build=${FORGE_BUILD:-$root/build}
jobs=${FORGE_JOBS:-2}
python=${FORGE_PYTHON:-python3}

current_step=""
fail_hint=""
on_error() {
  local rc=$?
  echo >&2
  echo "forge setup FAILED at step: ${current_step} (exit code ${rc})" >&2
  [ -n "$fail_hint" ] && echo "what to do: ${fail_hint}" >&2
  exit "$rc"
}
trap on_error ERR
step() { current_step=$1; fail_hint=$2; echo "==> ${current_step}"; }

# ---------------------------------------------------------------- apt packages
apt_packages=(
  cmake ninja-build ccache g++ pkg-config
  libtomlplusplus-dev libfmt-dev libspdlog-dev catch2 libboost-dev
  nlohmann-json3-dev libcli11-dev libstb-dev libicu-dev libgloo-dev
  libtcmalloc-minimal4
  libavformat-dev libavcodec-dev libswscale-dev libavutil-dev ffmpeg
  clang-14 libclang-rt-14-dev llvm-14
  libprotobuf-dev protobuf-compiler chromium
)
step "Debian packages" "check network access to the Debian mirror, or install these by hand: ${apt_packages[*]}"
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "    installing: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; false; }
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q >/dev/null
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "    all present"
fi

# ---------------------------------------------------------------- python venv
req="$root/scripts/requirements.txt"
step "Python environment with torch==2.11.0 ($venv)" \
     "check access to PyPI; to start over, delete $venv and rerun"
stamp="$venv/.forge-requirements-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --progress-bar off -r "$req"
  rm -f "$venv"/.forge-requirements-*
  touch "$stamp"
else
  echo "    up to date"
fi
"$venv/bin/python" -c 'import torch, sys; assert torch.__version__.startswith("2.11.0"), torch.__version__' \
  || { fail_hint="the venv holds the wrong torch; delete $venv and rerun"; false; }

# ---------------------------------------------------------------- configure
if [ "${1:-}" = "--no-build" ]; then exit 0; fi
configure_log="$build/configure.log"
mkdir -p "$build"
step "CMake configure ($build)" "read the CMake error above; to start over, delete $build and rerun"
if [ ! -f "$build/build.ninja" ] || ! grep -q "FORGE_PYTHON:FILEPATH=$venv/bin/python" "$build/CMakeCache.txt" 2>/dev/null; then
  cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DFORGE_PYTHON:FILEPATH="$venv/bin/python" >"$configure_log" 2>&1 \
    || { cat "$configure_log" >&2; false; }
  echo "    configured (log: $configure_log)"
else
  echo "    already configured"
fi

# ---------------------------------------------------------------- build
step "build (ninja -j$jobs)" "read the compiler error above; 'cmake --build $build -j1' shows it alone"
ccache --max-size=10G >/dev/null 2>&1 || true
cmake --build "$build" -j "$jobs"
echo "==> forge is built: $build/bin/forge"
