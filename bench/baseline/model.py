"""The models of configs/bench/*.toml in plain PyTorch eager: forge's side by side.

The same architecture, init scheme and shapes as forge's joint_decoder,
cross_attention and mot arches over the random encoder stub and the
mlp_2layer adapter, written the way a researcher would write them in Python
(nn.Linear, F.scaled_dot_product_attention with is_causal, torch.optim.AdamW).
It is forge's reference for speed, not for bits: forge's numerics are checked
against Hugging Face transformers elsewhere.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class Mlp(nn.Module):  # SwiGLU
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_tables(head_dim, positions, theta):
    inv = (1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))).float().to(positions.device)
    freqs = positions.float()[:, None] * inv[None, :]
    return freqs.cos(), freqs.sin()  # (S, head_dim / 2): halves rotated, as forge and HF


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, dim, bias=False)

    def qkv(self, x):
        B, S, _ = x.shape
        return (self.q_proj(x).view(B, S, self.h, self.hd), self.k_proj(x).view(B, S, self.kv, self.hd),
                self.v_proj(x).view(B, S, self.kv, self.hd))

    def attend(self, q, k, v, cos, sin):
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        k = k.repeat_interleave(self.h // self.kv, 1)
        v = v.repeat_interleave(self.h // self.kv, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.h * self.hd)

    def forward(self, x, cos, sin):
        return self.o_proj(self.attend(*self.qkv(x), cos, sin))


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, ffn):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = Attention(dim, heads, kv_heads)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = Mlp(dim, ffn)

    def forward(self, h, cos, sin):
        x = h + self.attention(self.attention_norm(h), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class CrossBlock(nn.Module):
    """Text queries, image keys/values, no RoPE, non-causal; starts as an identity."""

    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.h, self.hd = heads, dim // heads
        self.attn_norm = RMSNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = Mlp(dim, ffn)

    def forward(self, x, img):
        B, T, D = x.shape
        N = img.shape[1]
        q = self.q_proj(self.attn_norm(x)).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(img).view(B, N, self.h, self.hd).transpose(1, 2)
        v = self.v_proj(img).view(B, N, self.h, self.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        h = x + self.o_proj(o)
        return h + self.mlp(self.mlp_norm(h))


class MoTBlock(nn.Module):
    """Per-modality projections, norms and MLPs; one joint causal attention."""

    def __init__(self, dim, heads, kv_heads, ffn):
        super().__init__()
        self.attention_norm = nn.ModuleList([RMSNorm(dim) for _ in range(2)])
        self.attention = nn.ModuleList([Attention(dim, heads, kv_heads) for _ in range(2)])
        self.mlp_norm = nn.ModuleList([RMSNorm(dim) for _ in range(2)])
        self.mlp = nn.ModuleList([Mlp(dim, ffn) for _ in range(2)])

    def forward(self, h, n_image, cos, sin):
        parts = [h[:, :n_image], h[:, n_image:]]
        qkv = [self.attention[m].qkv(self.attention_norm[m](parts[m])) for m in range(2)]
        q, k, v = (torch.cat([qkv[0][i], qkv[1][i]], 1) for i in range(3))
        o = self.attention[0].attend(q, k, v, cos, sin)
        out = []
        for m, (a, b) in enumerate(((0, n_image), (n_image, h.shape[1]))):
            x = parts[m] + self.attention[m].o_proj(o[:, a:b])
            out.append(x + self.mlp[m](self.mlp_norm[m](x)))
        return torch.cat(out, 1)


class SiglipTower(nn.Module):
    """A SigLIP vision tower (pre-norm ViT, post-layernorm), randomly initialised, as forge's encoder/siglip."""

    def __init__(self, image_size, patch, dim, layers, heads, mlp):
        super().__init__()
        self.h = heads
        self.patch_embedding = nn.Conv2d(3, dim, patch, stride=patch)
        self.position_embedding = nn.Embedding((image_size // patch) ** 2, dim)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.ModuleDict({
                "layer_norm1": nn.LayerNorm(dim, eps=1e-6), "q": nn.Linear(dim, dim), "k": nn.Linear(dim, dim),
                "v": nn.Linear(dim, dim), "o": nn.Linear(dim, dim), "layer_norm2": nn.LayerNorm(dim, eps=1e-6),
                "fc1": nn.Linear(dim, mlp), "fc2": nn.Linear(mlp, dim)}))
        self.post_layernorm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, pixels):
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2) + self.position_embedding.weight
        B, N, D = x.shape
        for L in self.layers:
            y = L["layer_norm1"](x)
            q, k, v = (L[n](y).view(B, N, self.h, D // self.h).transpose(1, 2) for n in "qkv")
            x = x + L["o"](F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
            x = x + L["fc2"](F.gelu(L["fc1"](L["layer_norm2"](x)), approximate="tanh"))
        return self.post_layernorm(x)


def ffn_hidden(dim, explicit=None):  # forge's and KempnerForge's rule: 4 * dim * 2/3, up to a multiple of 256
    return explicit if explicit else (int(4 * dim * (2.0 / 3.0)) + 255) // 256 * 256


class VLM(nn.Module):
    def __init__(self, c, arch):
        super().__init__()
        D, L, H, KV = c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"]
        F_ = ffn_hidden(D, c.get("ffn_hidden_dim"))
        self.arch, self.c = arch, c
        self.adapter = nn.Sequential(nn.Linear(c["feature_dim"], D), nn.GELU(), nn.Linear(D, D))
        self.embed = nn.Embedding(c["vocab_size"], D)
        if arch == "mot":
            self.layers = nn.ModuleList([MoTBlock(D, H, KV, F_) for _ in range(L)])
            self.final_norms = nn.ModuleList([RMSNorm(D) for _ in range(2)])
        else:
            self.layers = nn.ModuleList([Block(D, H, KV, F_) for _ in range(L)])
            self.norm = RMSNorm(D)
        if arch == "cross_attention":
            self.every = c["cross_attention_every_n_layers"]
            self.cross = nn.ModuleList([CrossBlock(D, H, F_) for _ in range(L // self.every)])
        self.head = nn.Linear(D, c["vocab_size"], bias=False)
        self.init_weights(L, c.get("init_std", 0.02))

    @torch.no_grad()
    def init_weights(self, L, std):  # forge's scheme: N(0, std), output projections std / sqrt(2L)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                if name.endswith(".bias"):
                    p.zero_()
                continue
            out = name.endswith("o_proj.weight") or name.endswith("down_proj.weight")
            p.normal_(0.0, std / math.sqrt(2 * L) if out else std)
        for b in getattr(self, "cross", []):  # identity at the start
            b.o_proj.weight.zero_()
            b.mlp.down_proj.weight.zero_()

    def forward(self, feats, ids, labels):
        img = self.adapter(feats)
        h = self.embed(ids)
        B, T = ids.shape
        N = img.shape[1]
        theta, hd = self.c.get("rope_theta", 10000.0), self.c["dim"] // self.c["n_heads"]
        if self.arch == "cross_attention":
            cos, sin = rope_tables(hd, torch.arange(T, device=ids.device), theta)
            for i, layer in enumerate(self.layers):
                h = layer(h, cos, sin)
                if (i + 1) % self.every == 0:
                    h = self.cross[(i + 1) // self.every - 1](h, img.to(h.dtype))
            logits = self.head(self.norm(h[:, :-1]))
            targets = labels[:, 1:]
        else:
            h = torch.cat([img.to(h.dtype), h], 1)
            pos = torch.arange(N + T, device=ids.device)
            if self.arch == "mot":
                pos = torch.where(pos < N, pos, pos - N)  # RoPE restarts for the text
            cos, sin = rope_tables(hd, pos, theta)
            for layer in self.layers:
                h = layer(h, N, cos, sin) if self.arch == "mot" else layer(h, cos, sin)
            h = h[:, N - 1:N - 1 + T]
            h = self.final_norms[1](h) if self.arch == "mot" else self.norm(h)
            logits = self.head(h)
            targets = labels
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
