#!/usr/bin/env python3
"""Peak memory and step time of `forge train` per train.activation_checkpointing mode, on the CPU.

The `small` shape of issue 13 (decoder 512 x 8 layers, 8 heads, 2 KV heads, vocab 32000, 192 text tokens,
batch 8), with configs/shapes.toml's SigLIP tower at 768 wide and 64 patch tokens. Peak memory is the
process's maximum resident set (fp32 weights, gradients and AdamW state are the same in every mode, so the
differences are activations). Writes bench/results/ac_memory.json.

    bench/ac_memory.py [build-dir]
"""
import json
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile

root = pathlib.Path(__file__).resolve().parent.parent
forge = str(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else root / "build") / "bin" / "forge")
shape = ["--model.dim=512", "--model.n_layers=8", "--model.n_heads=8", "--model.n_kv_heads=2",
         "--model.vocab_size=32000", "--model.max_seq_len=320", "--vision_encoder.patch_size=6",
         "--vision_encoder.feature_dim=768", "--vision_encoder.num_heads=12", "--vlm.max_text_len=192",
         "--train.seq_len=320", "--train.batch_size=8", "--train.max_steps=4", "--metrics.log_interval=1",
         "--eval.enabled=false", "--checkpoint.save_final=false", "--checkpoint.interval=100000",
         "--train.device=cpu"]
results = []
for mode in ["none", "selective", "full"]:
    with tempfile.TemporaryDirectory() as run:
        # A fresh interpreter per mode, so RUSAGE_CHILDREN holds this run's peak only.
        code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                "sys.stderr.write(r.stdout + r.stderr if r.returncode else ''); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
        cmd = [sys.executable, "-c", code, forge, "train", str(root / "configs/shapes.toml"), *shape,
               "--checkpoint.dir=" + run, "--train.activation_checkpointing=" + mode]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{mode}: forge train failed:\n{p.stderr}")
        rows = [json.loads(line) for line in open(run + "/metrics.jsonl") if '"loss"' in line]
        times = sorted(r["step_time_s"] for r in rows[1:])
        results.append({"mode": mode, "peak_rss_bytes": int(p.stdout.split()[-1]) * 1024,
                        "median_step_s": times[len(times) // 2], "final_loss": rows[-1]["loss"]})
out = root / "bench/results/ac_memory.json"
out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "shape": shape,
                           "results": results}, indent=2) + "\n")
print(f"{'mode':10} {'peak RSS':>10} {'step (s)':>9} {'loss':>10}")
for r in results:
    print(f"{r['mode']:10} {r['peak_rss_bytes'] / 2**30:8.2f} GB {r['median_step_s']:9.3f} {r['final_loss']:10.6f}")
