#!/usr/bin/env bash
# The main job: set everything up (scripts/setup.sh), train the default VLM
# (configs/shapes.toml) on the embedded dataset, then caption held-out images
# it has never seen and print them next to the true captions.
#   scripts/demo.sh                        # extra arguments go to `forge train`
#   scripts/demo.sh --train.max_steps=300  # e.g. a shorter run
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
forge="${FORGE_BUILD:-$root/build}/bin/forge"
cd "$root"
run=runs/shapes
if [ -e "$run/latest" ]; then
  echo "==> $run has a checkpoint: training resumes from it (delete $run to start over)"
fi
echo "==> training configs/shapes.toml (a few minutes on 2 CPU cores)"
"$forge" train configs/shapes.toml "$@"

echo "==> captioning held-out images with forge generate"
samples=$(mktemp -d)
trap 'rm -rf "$samples"' EXIT
"$forge" data sample --split heldout --out "$samples" -n 6 --log-level=warn > /dev/null
i=0
while IFS= read -r line; do
  image=$(printf '%s' "$line" | sed -e 's/.*"image":"\([^"]*\)".*/\1/')
  truth=$(printf '%s' "$line" | sed -e 's/.*"text":"\([^"]*\)".*/\1/')
  caption=$("$forge" generate --checkpoint "$run" --image "$samples/$image" --log-level=warn)
  printf '  %-16s truth: %-48s forge: %s\n' "$image" "$truth" "$caption"
  i=$((i + 1))
done < "$samples/manifest.jsonl"
echo "==> done: checkpoints and metrics.jsonl in $run; caption your own image with"
echo "    $forge generate --checkpoint $run --image <file.png>"
echo "==> the run report (curves, captioned held-out images, plugins, config; open it in a browser):"
echo "    $root/$run/report.html"
