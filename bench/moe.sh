#!/usr/bin/env bash
# Mixture-of-experts step time against a dense model of equal active
# parameters, on the `small` shape (configs/bench/small.toml) with forge bench:
#   - dense: every layer a SwiGLU MLP of hidden F;
#   - moe_top1: every layer 8 experts of hidden F, top-1 routing (softmax
#     router): each token runs one expert, so the active parameters equal the
#     dense model's plus the routers';
#   - moe_top2_half: 8 experts of hidden F/2 (moe_expert_ffn_multiplier 0.5),
#     top-2: the same active FFN parameters, split over two experts;
#   - moma: MoMa with 4 image and 4 text experts of hidden F, expert choice at
#     the default capacity (each expert takes 1/4 of its modality's tokens), so
#     a token gets one expert's work on average.
# Writes bench/results/moe_<precision><suffix>.json and prints a table with
# each run's time relative to dense.
#   bench/moe.sh [build-dir] [fp32|bf16] [steps] [suffix]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
forge=${1:-$root/build}/bin/forge
precision=${2:-fp32}
steps=${3:-5}
out=$root/bench/results/moe_${precision}${4:-}.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=("$root/configs/bench/small.toml" --train.mixed_precision="$precision" --steps "$steps" --warmup 2)

run() {
  local name=$1
  shift
  "$forge" bench "${common[@]}" --label "$name" --out "$work/$name.json" "$@" > "$work/$name.log" 2>&1 ||
    { cat "$work/$name.log" >&2; exit 1; }
  echo "$work/$name.json"
}

files=(
  "$(run dense)"
  "$(run moe_top1 --model.num_experts=8 --model.moe_top_k=1 --model.moe_frequency=1)"
  "$(run moe_top2_half --model.num_experts=8 --model.moe_top_k=2 --model.moe_frequency=1 --model.moe_expert_ffn_multiplier=0.5)"
  "$(run moma --vlm.arch=moma)"
)
python3 - "$out" "$(lscpu | sed -n 's/^Model name: *//p')" "$(nproc)" "${files[@]}" <<'PY'
import json, sys
out, machine, cores, *files = sys.argv[1:]
rows = [json.load(open(f)) for f in files]
keep = ("label", "arch", "precision", "parameters", "batch_size", "text_tokens", "timed_steps",
        "step_time_median_s", "step_time_p90_s", "flops_per_step", "achieved_flops_per_s", "mfu")
res = {"machine": machine, "cores": int(cores), "results": [{k: r[k] for k in keep} for r in rows]}
json.dump(res, open(out, "w"), indent=2)
dense = rows[0]["step_time_median_s"]
print(f"{'run':15} {'params':>10} {'step (s)':>9} {'vs dense':>9} {'active GFLOP':>13}")
for r in rows:
    print(f"{r['label']:15} {r['parameters'] / 1e6:9.1f}M {r['step_time_median_s']:9.3f} "
          f"{r['step_time_median_s'] / dense:9.2f} {r['flops_per_step'] / 1e9:13.1f}")
PY
