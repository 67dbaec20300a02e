#!/usr/bin/env bash
# Runs forge's libFuzzer targets (fuzz/README.md) under ASan + UBSan.
#   scripts/fuzz.sh                         # every target, 60 s each
#   scripts/fuzz.sh --time 600 safetensors  # one target, 10 minutes
#   scripts/fuzz.sh --time 30 --jobs 2      # two targets at a time
# Builds build-san/ (scripts/sanitize.sh --configure), writes the seed corpora
# (fuzz/make_seeds.py) and keeps each target's growing corpus in
# build-san/fuzz/corpus/<target>/. A finding (crash, leak, sanitizer report,
# broken property) is saved under build-san/fuzz/findings/<target>/ and makes
# the script exit 1; reproduce it with build-san/bin/fuzz_<target> <file>.
# Prints, per target: executions, coverage (edges), features and corpus size.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FORGE_SAN_BUILD:-$root/build-san}
venv=${FORGE_VENV:-$HOME/.cache/forge/venv-torch2.11.0}
all_targets=(config_toml safetensors hf_config hf_folder tokenizer_json tokenizer_encode jsonl_manifest image_decode video_decode run_report)
seconds=60
parallel=1
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) seconds=$2; shift 2 ;;
    --jobs) parallel=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *)
      if [[ ! " ${all_targets[*]} " == *" $1 "* ]]; then
        echo "fuzz.sh: no fuzz target '$1'; targets: ${all_targets[*]}" >&2; exit 2
      fi
      targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

FORGE_SAN_BUILD=$build "$root/scripts/sanitize.sh" --configure
# shellcheck source=scripts/sanitizer-env.sh
source "$root/scripts/sanitizer-env.sh"
echo "==> build the fuzz targets"
cmake --build "$build" -j "${FORGE_JOBS:-2}" --target fuzz_targets
echo "==> seed corpora (fuzz/make_seeds.py)"
"$venv/bin/python" "$root/fuzz/make_seeds.py" --out "$build/fuzz"

run_one() {
  local t=$1 corpus=$build/fuzz/corpus/$1 findings=$build/fuzz/findings/$1 log=$build/fuzz/logs/$1.log
  mkdir -p "$corpus" "$findings" "$(dirname "$log")"
  # -rss_limit_mb: LibTorch alone takes ~550 MB; a parser input that needs more than 2.5 GB is a finding.
  if "$build/bin/fuzz_$t" "$corpus" "$build/fuzz/seeds/$t" -max_total_time="$seconds" -timeout=60 \
       -rss_limit_mb=2560 -print_final_stats=1 -artifact_prefix="$findings/" >"$log" 2>&1; then
    local done_line execs
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz_$t: ok, ${seconds} s, ${execs} executions, $(sed -E 's/.*(cov: [0-9]+ ft: [0-9]+ corp: [^ ]+).*/\1/' <<<"$done_line")"
  else
    echo "fuzz_$t: FINDING (log: $log; input: $(ls -t "$findings" | head -1))"
    grep -E 'ERROR|SUMMARY|property violated|runtime error' "$log" | head -5 | sed 's/^/    /'
    return 1
  fi
}

echo "==> fuzzing ${#targets[@]} target(s), ${seconds} s each, ${parallel} at a time"
failed=0
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$parallel" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
