#!/usr/bin/env bash
# Makes docs/images/report.png, the run-report screenshot in docs/training.md:
# the top of a run's report.html (tiles and curves) as headless Chromium
# renders it, at 1200 x 1000 pixels.
#   scripts/report-screenshot.sh              # runs/shapes (trained first if it holds no run)
#   scripts/report-screenshot.sh RUN_DIR [OUT.png]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
forge="${FORGE_BUILD:-$root/build}/bin/forge"
run=${1:-$root/runs/shapes}
out=${2:-$root/docs/images/report.png}
[ -x "$forge" ] || { echo "no $forge: run scripts/setup.sh first" >&2; exit 2; }
command -v chromium >/dev/null || { echo "chromium not found: scripts/setup.sh installs it (Debian's chromium)" >&2; exit 2; }
if [ $# -eq 0 ] && [ ! -f "$run/metrics.jsonl" ]; then
  echo "==> $run holds no run: training configs/shapes.toml into it (a few minutes)"
  "$forge" train "$root/configs/shapes.toml" --checkpoint.dir="$run" --log-level=warn
fi
html=$(mktemp --suffix=.html)
trap 'rm -f "$html"' EXIT
"$forge" report "$run" --out "$html" > /dev/null
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
  --force-device-scale-factor=1 --window-size=1200,1000 --screenshot="$out" "file://$html" 2> /dev/null
[ -s "$out" ] || { echo "chromium wrote no screenshot to $out" >&2; exit 1; }
echo "wrote $out ($(du -k "$out" | cut -f1) KiB)"
