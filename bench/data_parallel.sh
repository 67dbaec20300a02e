#!/usr/bin/env bash
# Data-parallel memory and step time on this machine's CPUs (Gloo):
# per-rank bytes of weights + gradients + AdamW state at world 1, 2 and 4,
# fully sharded against replicated, and the step-time cost of sharding and of
# activation checkpointing. Writes bench/results/data_parallel.json.
#   bench/data_parallel.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
forge=${1:-$root/build}/bin/forge
out=$root/bench/results/data_parallel.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shape="--model.dim=256 --model.n_layers=4 --model.n_heads=4 --model.n_kv_heads=2 --vision_encoder.feature_dim=256
  --train.batch_size=4 --train.threads=1 --train.device=cpu --train.max_steps=12 --metrics.log_interval=1
  --eval.interval=100000 --checkpoint.interval=100000 --checkpoint.save_final=false"

# run NAME ARGS...: trains, then prints one JSON object with the measurements.
run() {
  local name=$1
  shift
  local dir=$work/$name
  # shellcheck disable=SC2086
  "$forge" train "$root/configs/shapes.toml" $shape --checkpoint.dir="$dir" "$@" > "$dir.log" 2>&1 ||
    { cat "$dir.log" >&2; exit 1; }
  python3 - "$name" "$dir/metrics.jsonl" "$*" <<'PY'
import json, statistics, sys
name, path, args = sys.argv[1:4]
rows = [json.loads(l) for l in open(path) if '"loss"' in l]
times = sorted(r["step_time_s"] for r in rows[2:])  # after two warm-up steps
held = next(r["rank_state_bytes"] for r in rows if "rank_state_bytes" in r)
print(json.dumps({"run": name, "args": args, "rank_state_bytes": held,
                  "median_step_s": statistics.median(times), "steps_timed": len(times)}))
PY
}

{
  echo '{"machine": "'"$(lscpu | sed -n 's/^Model name: *//p')"'", "cores": '"$(nproc)"', "results": ['
  run world1 --distributed.dp_shard=1
  echo ,; run replicated2 --nproc 2 --distributed.dp_shard=1 --distributed.dp_replicate=2
  echo ,; run sharded2 --nproc 2
  echo ,; run sharded2_prefetch --nproc 2 --distributed.prefetch=on
  echo ,; run hybrid2x2 --nproc 4 --distributed.dp_shard=2 --distributed.dp_replicate=2
  echo ,; run replicated4 --nproc 4 --distributed.dp_shard=1 --distributed.dp_replicate=4
  echo ,; run sharded4 --nproc 4
  echo ,; run world1_ac_full --train.activation_checkpointing=full
  echo ,; run world1_ac_selective --train.activation_checkpointing=selective
  echo ']}'
} > "$out.tmp"
python3 -m json.tool "$out.tmp" > "$out" && rm -f "$out.tmp"
python3 - "$out" <<'PY'
import json, sys
r = {x["run"]: x for x in json.load(open(sys.argv[1]))["results"]}
w1 = r["world1"]
print(f"{'run':22} {'bytes/rank':>12} {'of world 1':>10} {'step (s)':>9}")
for k, x in r.items():
    print(f"{k:22} {x['rank_state_bytes']:12.0f} {x['rank_state_bytes'] / w1['rank_state_bytes']:10.3f} {x['median_step_s']:9.4f}")
PY
