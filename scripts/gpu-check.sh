#!/usr/bin/env bash
# forge's checks on a CUDA machine, as one script (a GPU is not needed to
# build or test forge; CI runs on CPUs). It builds forge against the machine's
# own torch, runs the GPU tests, trains the default recipe on the GPU and
# captions a held-out image, measures a larger model's step time and MFU,
# and runs the command-line training tests with the GPU visible.
#
#   scripts/gpu-check.sh [OUTDIR]        # logs go to OUTDIR (default: $OUT or /tmp/forge-gpu)
#
# Needs the Debian -dev packages forge builds with; on a machine without them,
# unpack them first (see docs/training.md, "On a GPU").
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:-/tmp/forge-gpu}}
build=${FORGE_BUILD:-$root/build-gpu}
jobs=${FORGE_JOBS:-$(nproc)}
python=${FORGE_PYTHON:-$(command -v python3)}
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
say() { echo "==> $*" | tee -a "$log"; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
say "torch: $("$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"

# The configure and build logs stay in the build folder (copied out on failure).
mkdir -p "$build"
say "configure ($build)"
if ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFORGE_PYTHON:FILEPATH="$python" \
     -DFORGE_BUILD_BENCH=OFF >"$build/configure.log" 2>&1; then
  cp "$build/configure.log" "$out/"; tail -40 "$build/configure.log" | tee -a "$log"; say "FAILED: configure"; exit 1
fi
grep -E "forge: (NCCL|LibTorch)" "$build/configure.log" | tee -a "$log"

say "build forge, the plugins, test_cuda, test_training (-j$jobs)"
if ! cmake --build "$build" -j "$jobs" --target forge test_cuda test_training >"$build/build.log" 2>&1; then
  cp "$build/build.log" "$out/"; grep -E "error|Error" -A3 "$build/build.log" | head -60 | tee -a "$log"
  say "FAILED: build"; exit 1
fi
say "built in $(elapsed); the forge binary loads: $(readelf -d "$build/bin/forge" | grep -m3 NEEDED | sed 's/.*\[//; s/\]//' | tr '\n' ' ')"
forge="$build/bin/forge"
rc=0

say "GPU tests (test_cuda)"
timeout 300 "$build/bin/test_cuda" --durations yes >"$out/test_cuda.log" 2>&1 || rc=1
tail -25 "$out/test_cuda.log" | tee -a "$log"

say "default recipe on the GPU: forge train configs/shapes.toml --train.device=cuda --train.mixed_precision=bf16 ($(elapsed))"
run=/tmp/forge-gpu-shapes
rm -rf "$run"
timeout 300 "$forge" train "$root/configs/shapes.toml" --train.device=cuda --train.mixed_precision=bf16 --checkpoint.dir=$run \
  >"$out/train_shapes.log" 2>&1 || rc=1
grep -E "device|step 1/|step 1000/|eval final|checkpoint .*step_00001000|error" "$out/train_shapes.log" | tee -a "$log"
"$forge" data sample --split heldout -n 4 --out /tmp/forge-gpu-samples | tee -a "$log"
for i in 0 1 2 3; do
  echo "heldout_00000$i.png generated: $("$forge" generate --checkpoint $run \
    --image /tmp/forge-gpu-samples/heldout_00000$i.png --log-level=warn 2>&1)" | tee -a "$log"
done
"$forge" eval --checkpoint $run 2>&1 | tee -a "$log" || rc=1

say "a larger model on the GPU: step time, tokens/s, MFU ($(elapsed))"
for arch in joint_decoder cross_attention mot; do
  extra=""
  [ $arch = cross_attention ] && extra="--vlm.cross_attention_every_n_layers=4"
  timeout 240 "$forge" train "$root/configs/shapes.toml" --train.device=cuda --train.mixed_precision=bf16 --vlm.arch=$arch $extra \
    --model.dim=2048 --model.n_layers=16 --model.n_heads=16 --model.n_kv_heads=8 --model.max_seq_len=96 \
    --vision_encoder.feature_dim=768 --vision_encoder.num_layers=4 --vision_encoder.num_heads=12 \
    --train.batch_size=128 --train.max_steps=30 --metrics.log_interval=10 --data.num_workers=6 \
    --eval.enabled=false --checkpoint.interval=1000000 --checkpoint.save_final=false \
    --checkpoint.dir=/tmp/forge-gpu-big-$arch >"$out/train_big_$arch.log" 2>&1 || rc=1
  echo "$arch: $(grep -E 'model:' "$out/train_big_$arch.log" | sed 's/.*model: //')" | tee -a "$log"
  grep -E "step (10|20|30)/30|error" "$out/train_big_$arch.log" | tee -a "$log"
done

say "command-line training tests with the GPU visible ($(elapsed))"
timeout 300 "$build/bin/test_training" "[cli]" >"$out/test_training_cli.log" 2>&1 || rc=1
tail -5 "$out/test_training_cli.log" | tee -a "$log"

say "done in $(elapsed), exit $rc"
exit $rc
