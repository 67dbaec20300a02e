"""Times the PyTorch eager baseline of a configs/bench/*.toml model, the way
`forge bench` times forge: the same synthetic batch, warm-up steps, then the
median and p90 of timed steps of zero_grad, forward (+ autocast bf16),
cross-entropy, backward, clip_grad_norm_ and AdamW.

    python bench/baseline/run.py configs/bench/small.toml --arch mot --precision bf16 [--steps 10] [--out F.json]
"""
import argparse
import json
import os
import statistics
import sys
import time
import tomllib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import VLM, SiglipTower  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--arch", default=None, help="joint_decoder | cross_attention | mot (default: the config's)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default="")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config key as forge's --section.key=value does (repeatable)")
    a = ap.parse_args()
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    for item in a.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word is a string, as in forge
        cfg.setdefault(section, {})[name] = parsed
    m, enc, vlm, train = cfg["model"], cfg["vision_encoder"], cfg["vlm"], cfg["train"]
    if enc.get("type") not in ("random", "siglip") or (enc.get("type") == "siglip" and enc.get("path")):
        sys.exit(f"{a.config}: the baseline models the random stub and a randomly initialised SigLIP tower only")
    arch = a.arch or vlm.get("arch", "joint_decoder")
    c = dict(m)
    c.setdefault("n_kv_heads", m["n_heads"])
    c["feature_dim"] = enc["feature_dim"]
    c["cross_attention_every_n_layers"] = vlm.get("cross_attention_every_n_layers", 4)
    torch.manual_seed(train.get("seed", 42))
    dev = torch.device(a.device)
    model = VLM(c, arch).to(dev)
    tower = None
    if enc["type"] == "siglip":  # frozen, as the bench configs have it: forward without a graph
        side, patch = enc.get("image_size") or 224, enc.get("patch_size", 16)
        tower = SiglipTower(side, patch, enc["feature_dim"], enc.get("num_layers", 12), enc.get("num_heads", 12),
                            enc.get("intermediate_size") or 4 * enc["feature_dim"]).to(dev).requires_grad_(False)
        enc["num_tokens"] = (side // patch) ** 2
        pixels = torch.rand(train["batch_size"], 3, side, side, generator=torch.Generator().manual_seed(1)).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    B, T, N, Fd = train["batch_size"], vlm["max_text_len"], enc["num_tokens"], enc["feature_dim"]
    g = torch.Generator().manual_seed(train.get("seed", 42))
    ids = torch.randint(0, m["vocab_size"], (B, T), generator=g).to(dev)
    labels = ids.clone()

    def features():  # the stub's cost: one seeded draw per image, as forge's random encoder
        if tower is not None:
            with torch.inference_mode():
                f = tower(pixels)
            return f.clone()  # a normal tensor again, as forge does
        return torch.stack([torch.randn(N, Fd, generator=torch.Generator().manual_seed(i)) for i in range(B)]).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for s in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(features(), ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    res = {"kind": "baseline_train_step", "config": a.config, "arch": arch, "precision": a.precision,
           "device": str(dev), "batch_size": B, "text_tokens": T, "step_time_median_s": median,
           "step_time_p90_s": p90, "step_times_s": times, "last_loss": loss.item(),
           "parameters": sum(p.numel() for p in model.parameters()) + (
               sum(p.numel() for p in tower.parameters()) if tower is not None else 0),
           "versions": {"torch": torch.__version__, "threads": torch.get_num_threads()}}
    print(json.dumps(res, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
