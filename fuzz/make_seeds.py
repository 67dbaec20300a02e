"""Seed corpora and data files for forge's fuzz targets (fuzz/README.md).

Usage: make_seeds.py --out DIR

Writes DIR/seeds/<target>/ (one starting corpus per fuzz target, with the
inputs of fuzz/regressions/ that once found a bug) and
DIR/data/ (files the targets read besides their input: the generated
tokenizers and a clip). Everything is generated here, from the repository's
configs, the PyPI `tokenizers`, `safetensors`, `transformers` and Pillow
packages and the ffmpeg CLI; nothing is downloaded and no blob is committed.
Idempotent: files are rewritten with the same content.
"""
import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def config_seeds(out):
    """Every shipped config, some with overrides after NUL bytes."""
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.toml"), recursive=True))
    overrides = ["--train.max_steps=3", "--model.dim=64", "--data.batch_size=2", "--optimizer.lr=1e-3"]
    for i, p in enumerate(paths):
        with open(p) as f:
            text = f.read()
        name = os.path.relpath(p, ROOT).replace("/", "_")
        put(os.path.join(out, name), text)
        put(os.path.join(out, name + ".over"), text + "\0" + "\0".join(overrides[: 1 + i % len(overrides)]))
    put(os.path.join(out, "empty_over"), "\0--train.max_steps=2\0--model.n_layers=1")


def safetensors_seeds(out):
    import torch
    from safetensors.torch import save

    g = torch.Generator().manual_seed(0)
    cases = {
        "f32": {"a": torch.randn(2, 3, generator=g), "b": torch.zeros(0, 4)},
        "mixed": {"w": torch.randn(4, generator=g).to(torch.bfloat16), "h": torch.randn(2, 2, generator=g).half(),
                  "i": torch.arange(6, dtype=torch.int64).view(2, 3), "u": torch.arange(5, dtype=torch.uint8),
                  "m": torch.tensor([True, False])},
        "scalar": {"s": torch.tensor(3.5), "d": torch.randn(3, generator=g, dtype=torch.float64)},
        "names": {"model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
                  "model.norm.weight": torch.ones(4)},
    }
    for name, tensors in cases.items():
        put(os.path.join(out, name + ".safetensors"), save(tensors, metadata={"format": "pt"} if name == "f32" else None))


def hf_config_seeds(out):
    import transformers as tf

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300, max_position_embeddings=128)
    configs = {
        "llama": tf.LlamaConfig(**small),
        "llama3_rope": tf.LlamaConfig(**small, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                              "original_max_position_embeddings": 64}),
        "mistral": tf.MistralConfig(**small, sliding_window=None),
        "qwen2": tf.Qwen2Config(**small, tie_word_embeddings=True),
        "qwen3": tf.Qwen3Config(**small, head_dim=32),
    }
    generation = json.dumps({"bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0})
    preprocessor = json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3})
    vision = json.dumps({"model_type": "siglip", "vision_config": {"image_size": 32, "patch_size": 8}})
    for i, (name, cfg) in enumerate(configs.items()):
        text = cfg.to_json_string()
        put(os.path.join(out, name), text)
        put(os.path.join(out, name + ".gen"), text + "\0" + generation + ("\0" + preprocessor if i % 2 else ""))
    put(os.path.join(out, "vision"), vision + "\0\0" + preprocessor)


def hf_folder_seeds(out, data):
    """Tiny causal LMs of each family init_from_hf reads, saved by transformers: config.json, NUL,
    model.safetensors."""
    import torch
    import transformers as tf

    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=24, max_position_embeddings=32)
    models = {
        "llama": (tf.LlamaConfig(**tiny), tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config(**tiny, tie_word_embeddings=True), tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config(**tiny, head_dim=8), tf.Qwen3ForCausalLM),
        "mistral": (tf.MistralConfig(**tiny, sliding_window=None), tf.MistralForCausalLM),
    }
    tmp = os.path.join(data, "tmp_hf")
    for name, (cfg, cls) in models.items():
        torch.manual_seed(0)
        model = cls(cfg)
        if name == "mistral":
            model = model.to(torch.bfloat16)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        with open(os.path.join(tmp, "config.json"), "rb") as f:
            config = f.read()
        with open(os.path.join(tmp, "model.safetensors"), "rb") as f:
            weights = f.read()
        put(os.path.join(out, name), config + b"\0" + weights)
    shutil.rmtree(tmp, ignore_errors=True)


def tokenizer_seeds(out_json, out_encode, data):
    from tokenizer_fixtures import TRAIN_CORPUS, make_tokenizers

    tok_dir = os.path.join(data, "tokenizers")
    if not os.path.exists(os.path.join(tok_dir, ".complete")):
        shutil.rmtree(tok_dir, ignore_errors=True)
        make_tokenizers(tok_dir)
        put(os.path.join(tok_dir, ".complete"), "")
    texts = TRAIN_CORPUS[:8]
    for i, folder in enumerate(sorted(glob.glob(os.path.join(tok_dir, "tok_*")))):
        with open(os.path.join(folder, "tokenizer.json")) as f:
            tj = f.read()
        cfg_path = os.path.join(folder, "tokenizer_config.json")
        seed = tj + "\0" + texts[i % len(texts)]
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                seed += "\0" + f.read()
        put(os.path.join(out_json, os.path.basename(folder)), seed)
    for i, t in enumerate(TRAIN_CORPUS):
        put(os.path.join(out_encode, f"text{i}"), t)
    put(os.path.join(out_encode, "bytes"), bytes(range(256)))


def image_bytes():
    from PIL import Image

    img = Image.new("RGB", (5, 3))
    img.putdata([(i * 17 % 256, i * 5 % 256, 255 - i * 9 % 256) for i in range(15)])
    out = {}
    for name, im, fmt, kw in [
        ("rgb.png", img, "PNG", {}),
        ("gray.png", img.convert("L"), "PNG", {}),
        ("rgba.png", img.convert("RGBA"), "PNG", {}),
        ("palette.png", img.convert("P"), "PNG", {}),
        ("gray16.png", img.convert("I;16"), "PNG", {}),
        ("interlaced.png", img, "PNG", {"interlace": 1}),
        ("base.jpg", img, "JPEG", {"quality": 90}),
        ("progressive.jpg", img, "JPEG", {"progressive": True}),
        ("gray.jpg", img.convert("L"), "JPEG", {}),
        ("img.bmp", img, "BMP", {}),
    ]:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    return out


def video_seeds(out, data):
    def ffmpeg(args, path):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi"] + args + [path], check=True)

    tmp = os.path.join(data, "tmp")
    os.makedirs(tmp, exist_ok=True)
    clips = {
        "mpeg4.mp4": ["-i", "testsrc=s=16x16:r=4:d=1", "-c:v", "mpeg4", "-pix_fmt", "yuv420p"],
        "h264.mp4": ["-i", "testsrc=s=16x16:r=5:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
        "vp9.webm": ["-i", "testsrc=s=16x16:r=4:d=1", "-c:v", "libvpx-vp9"],
        "mjpeg.avi": ["-i", "testsrc=s=16x8:r=3:d=1", "-c:v", "mjpeg"],
        "anim.gif": ["-i", "testsrc=s=8x8:r=2:d=1"],
    }
    flags = [0x02, 0x0b, 0x15, 0x3f, 0x00]
    for (name, args), flag in zip(clips.items(), flags):
        path = os.path.join(tmp, name)
        try:
            ffmpeg(args, path)
        except subprocess.CalledProcessError:
            print(f"make_seeds: ffmpeg could not write {name}; skipped", file=sys.stderr)
            continue
        with open(path, "rb") as f:
            put(os.path.join(out, name), bytes([flag]) + f.read())
    shutil.copy(os.path.join(tmp, "mpeg4.mp4"), os.path.join(data, "clip.mp4"))
    shutil.rmtree(tmp)


def jsonl_seeds(out):
    rows = [
        ['{"image": "a.png", "text": "a grey picture"}', '{"image": "b.jpg", "text": "the same", "prompt": "Say:"}'],
        ['{"image": "a.png", "text": "ok"}', "not json", '{"image": "missing.png", "text": "x"}',
         '{"image": "a.png", "text": ""}', '{"text": "no image"}', '{"image": 3, "text": "x"}',
         '{"image": "a.png", "text": "r", "references": ["one", "two"]}', '{"image": "a.png", "text": "r", "references": [" "]}'],
        ['{"video": "clip.mp4", "text": "a clip"}', '{"video": "clip.mp4", "text": "again", "prompt": "Describe:"}'],
        ['{"image": "a.png", "text": "caf\\u00e9 \\ud83d\\udc4d"}', "", "  ", '{"image": "./a.png", "text": "dot"}'],
    ]
    for i, r in enumerate(rows):
        flag = bytes([2 if "video" in r[0] else (1 if i == 1 else 0)])
        put(os.path.join(out, f"manifest{i}"), flag + "\n".join(r).encode() + b"\n")


def report_seeds(out):
    """run_report: metrics.jsonl, eval_captions.jsonl and run.json, separated by NUL bytes."""
    metrics = ('{"step": 1, "loss": 2.5, "lr": 0.001, "grad_norm": 1.5, "tokens_per_s": 900, "mfu": 0.1}\n'
               '{"step": 2, "eval/loss": 2.0, "eval/bleu4": 0.1, "eval/cider_d": 0.3, "eval/exact_match": 0}\n'
               "a line cut by a crash\n")
    captions = ('{"step": 2, "index": 0, "source": "m.jsonl:1", "reference": "a <b>", "generated": "a", '
                '"image": "eval_images/0.png"}\n{"step": 2, "index": 1, "reference": "x", "generated": "x", '
                '"image": "../outside.png"}\n')
    run = '{"config_toml": "[vlm]\\narch = \\"joint_decoder\\"", "plugins": [{"kind": "arch", "name": "x", "used": true}]}'
    put(os.path.join(out, "whole_run"), "\0".join([metrics, captions, run]).encode())
    put(os.path.join(out, "metrics_only"), metrics.encode())
    put(os.path.join(out, "wrong_types"), '{"step": 1, "loss": "x"}\n\0{"step": 1, "reference": 5}\n\0[]'.encode())


def regression_seeds(seeds):
    """fuzz/regressions/<target>/<name>.b64: inputs that once found a bug (base64 text, each under 2 KB),
    replayed first by every run of the target."""
    import base64

    for path in sorted(glob.glob(os.path.join(HERE, "regressions", "*", "*.b64"))):
        target = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            put(os.path.join(seeds, target, "regression-" + os.path.basename(path)[:-4]), base64.b64decode(f.read()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    seeds = os.path.join(args.out, "seeds")
    data = os.path.join(args.out, "data")
    os.makedirs(data, exist_ok=True)
    config_seeds(os.path.join(seeds, "config_toml"))
    safetensors_seeds(os.path.join(seeds, "safetensors"))
    hf_config_seeds(os.path.join(seeds, "hf_config"))
    hf_folder_seeds(os.path.join(seeds, "hf_folder"), data)
    tokenizer_seeds(os.path.join(seeds, "tokenizer_json"), os.path.join(seeds, "tokenizer_encode"), data)
    for name, b in image_bytes().items():
        put(os.path.join(seeds, "image_decode", name), b)
    video_seeds(os.path.join(seeds, "video_decode"), data)
    jsonl_seeds(os.path.join(seeds, "jsonl_manifest"))
    report_seeds(os.path.join(seeds, "run_report"))
    regression_seeds(seeds)
    counts = {t: len(os.listdir(os.path.join(seeds, t))) for t in sorted(os.listdir(seeds))}
    print("make_seeds: " + ", ".join(f"{t} {n}" for t, n in counts.items()))


if __name__ == "__main__":
    main()
