#!/usr/bin/env bash
# forge's GPU benchmarks in one go (bench/RESULTS.md, "vlm-1b on a GPU"):
# forge bench on configs/bench/vlm-1b.toml for every arch, the PyTorch
# baseline beside it, activation checkpointing at twice the batch, and the
# NCCL path at world 1 against no process group.
#
#   bench/gpu.sh [OUTDIR]      # needs a CUDA build: FORGE_BUILD (default build-gpu, from scripts/gpu-check.sh)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:-/tmp/forge-gpu-bench}}
build=${FORGE_BUILD:-$root/build-gpu}
python=${FORGE_PYTHON:-$(command -v python3)}
forge="$build/bin/forge"
cfg="$root/configs/bench/vlm-1b.toml"
steps=${FORGE_BENCH_STEPS:-8}
mkdir -p "$out"
log="$out/gpu-bench.log"
: >"$log"
say() { echo "==> $*" | tee -a "$log"; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }
rc=0
bench() {  # name, then forge bench arguments
  local name=$1; shift
  timeout 240 "$forge" bench "$cfg" --steps "$steps" --warmup 3 --out "$out/$name.json" --train.device=cuda "$@" \
    >"$out/$name.log" 2>&1 || { rc=1; tail -5 "$out/$name.log" | tee -a "$log"; }
  grep -E "^(step time|throughput|compute|  +MFU|memory|attention)" "$out/$name.log" | sed "s/^/$name: /" | tee -a "$log"
}

say "forge bench vlm-1b, every arch, bf16 ($(elapsed))"
for arch in joint_decoder cross_attention mot; do bench "forge_$arch" --vlm.arch=$arch; done

say "side by side with PyTorch eager on the GPU ($(elapsed))"
timeout 420 "$python" "$root/bench/side_by_side.py" --shape vlm-1b --device cuda --precision bf16 --rounds 1 \
  --steps "$steps" --forge "$forge" --out "$out/side_by_side_vlm-1b.json" 2>&1 | tee -a "$log" || rc=1

say "activation checkpointing: batch 8 without, batch 16 with ($(elapsed))"
bench ac_none_b8 --train.activation_checkpointing=none
bench ac_full_b16 --train.activation_checkpointing=full --train.batch_size=16

say "NCCL process group at world 1 against none ($(elapsed))"
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29571 bench nccl_world1
say "done in $(elapsed), exit $rc"
exit $rc
