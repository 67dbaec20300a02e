"""forge against the PyTorch eager baseline (bench/baseline/), in one run.

For each arch and precision it runs `forge bench` and the baseline
alternately, --rounds times each, and reports the ratio of the medians of
their median step times (forge / baseline: below 1 means forge is faster),
with forge's achieved FLOP/s against the measured GEMM rate.

    python bench/side_by_side.py [--shape small] [--rounds 3] [--steps 10] [--out bench/results/F.json]

Run it on an idle machine: the two share the CPU cores in turn, never at once.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd, out, env=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}")
    with open(out) as f:
        return json.load(f)


def cpu_model():
    """The CPU's model name (platform.processor() is often just the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_isa():
    """The CPU's bf16 matrix instructions as forge's resolve_precision reads them (core/training/precision.cpp,
    from the same ATen capability table): "AMX", "AVX512-BF16", or "" where it has neither."""
    import torch  # the baseline's torch, the same build as forge's LibTorch
    caps = torch._C._cpu._get_cpu_capability()
    if caps.get("amx_bf16") and caps.get("amx_tile"):
        return "AMX"
    return "AVX512-BF16" if caps.get("avx512_bf16") else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="small", help="configs/bench/<shape>.toml")
    ap.add_argument("--arch", action="append", help="repeatable; default: all three")
    ap.add_argument("--precision", action="append", choices=["fp32", "bf16"], help="repeatable; default: both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--forge", default=os.path.join(ROOT, "build", "bin", "forge"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config override for both forge and the baseline (repeatable)")
    ap.add_argument("--baseline-preload", default="",
                    help="LD_PRELOAD for the baseline too (e.g. libtcmalloc_minimal.so.4), to compare like with like")
    a = ap.parse_args()
    config = os.path.join(ROOT, "configs", "bench", a.shape + ".toml")
    archs = a.arch or ["joint_decoder", "cross_attention", "mot"]
    precisions = a.precision or ["fp32", "bf16"]
    skipped = []
    if a.device == "cpu" and "bf16" in precisions and not cpu_bf16_isa():
        # forge would compute in fp32 (and say so), and the baseline's autocast would run bf16 products emulated,
        # orders of magnitude slower: there is no bf16 side by side to take on this CPU.
        why = ("this CPU has neither AMX nor AVX512-BF16: forge's mixed_precision = \"bf16\" computes in fp32 "
               "here, and PyTorch's CPU autocast would emulate its bf16 products")
        if a.precision:
            print(f"--precision bf16: {why}; run fp32 only, or on a CPU with bf16 matrix instructions", file=sys.stderr)
            sys.exit(2)
        print(f"skipping bf16: {why}", flush=True)
        precisions = [p for p in precisions if p != "bf16"]
        skipped.append({"precision": "bf16", "why": why})
    rows = []
    tmp = tempfile.mkdtemp(prefix="forge-side-by-side-")
    for arch in archs:
        for prec in precisions:
            forge_t, base_t, last = [], [], None
            for r in range(a.rounds):
                fo = os.path.join(tmp, f"forge-{arch}-{prec}-{r}.json")
                last = run_json([a.forge, "bench", config, "--steps", str(a.steps), "--warmup", str(a.warmup),
                                 "--out", fo, "--log-level=warn", f"--vlm.arch={arch}",
                                 f"--train.mixed_precision={prec}", f"--train.device={a.device}"]
                                + [f"--{s}" for s in a.set], fo)
                if last["precision"] != prec:
                    sys.exit(f"forge ran {last['precision']} for {prec}: {last['precision_reason']}")
                forge_t.append(last["step_time_median_s"])
                bo = os.path.join(tmp, f"base-{arch}-{prec}-{r}.json")
                base = run_json([sys.executable, os.path.join(ROOT, "bench", "baseline", "run.py"), config,
                                 "--arch", arch, "--precision", prec, "--device", a.device, "--steps", str(a.steps),
                                 "--warmup", str(a.warmup), "--out", bo] + [f"--set={s}" for s in a.set], bo,
                                env=dict(os.environ, LD_PRELOAD=a.baseline_preload) if a.baseline_preload else None)
                base_t.append(base["step_time_median_s"])
            f, b = statistics.median(forge_t), statistics.median(base_t)
            row = {"arch": arch, "precision": prec, "forge_step_s": f, "baseline_step_s": b, "ratio": f / b,
                   "forge_rounds_s": forge_t, "baseline_rounds_s": base_t,
                   "forge_flops_per_s": last["flops_per_step"] / f, "gemm_flops_per_s": last["gemm_flops_per_s"],
                   "fraction_of_gemm": last["flops_per_step"] / f / last["gemm_flops_per_s"],
                   "attention_backend": last["attention_backend"], "parameters": last["parameters"]}
            rows.append(row)
            print(f"{arch:16s} {prec}: forge {f:.4f} s, baseline {b:.4f} s, ratio {f / b:.3f}; "
                  f"forge {row['forge_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * row['fraction_of_gemm']:.1f} % of "
                  f"the {prec} GEMM rate", flush=True)
    result = {"kind": "side_by_side", "shape": a.shape, "config": os.path.relpath(config, ROOT),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "platform": platform.platform()},
              "versions": last["versions"], "overrides": a.set, "baseline_preload": a.baseline_preload,
              "rounds": a.rounds, "steps": a.steps, "warmup": a.warmup, "rows": rows, "skipped": skipped}
    print("\n| arch | precision | forge (s) | baseline (s) | forge / baseline | forge / GEMM rate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['precision']} | {r['forge_step_s']:.4f} | {r['baseline_step_s']:.4f} | "
              f"{r['ratio']:.3f} | {100 * r['fraction_of_gemm']:.1f} % |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwritten to {a.out}")


if __name__ == "__main__":
    main()
