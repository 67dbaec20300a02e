// Reusable decoder building blocks, exported for arch plugins: norms, RoPE,
// GQA attention (with KV cache), MLPs, token embedding, output head, and the
// weight-init scheme. Parameter names follow KempnerForge's state dict
// (spec section 2.13), so weights move between forge and Python.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "forge/export.h"

namespace forge {
struct ModelConfig;
}

namespace forge::nn {

// RMSNorm (weight only, computed in fp32 and cast back) or LayerNorm (weight
// and bias). type: "rmsnorm" | "layernorm".
class FORGE_API NormImpl : public torch::nn::Module {
 public:
  NormImpl(int64_t dim, std::string type, double eps);
  ~NormImpl() override;
  at::Tensor forward(const at::Tensor& x);

  at::Tensor weight;
  at::Tensor bias;  // undefined for rmsnorm
  std::string type;
  double eps;
};
TORCH_MODULE(Norm);

// RoPE frequency scaling of pretrained families (HF's rope_scaling).
struct RopeScaling {
  std::string type = "none";  // "none" | "linear" (positions / factor) | "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_seq_len = 8192;
};

// Rotary position embedding, rotate-half form (not interleaved pairs):
// out = cat(x1*cos - x2*sin, x2*cos + x1*sin) over the two halves of a head.
// The tables are not parameters or buffers (they are not saved).
class FORGE_API RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  RotaryEmbedding(int64_t head_dim, int64_t max_seq_len, double theta, const RopeScaling& scaling = {});
  // cos/sin rows (S, head_dim/2) for `positions` (S,) int64, in `dtype` on positions' device.
  std::pair<at::Tensor, at::Tensor> rows(const at::Tensor& positions, at::ScalarType dtype) const;
  int64_t max_seq_len() const { return max_seq_len_; }

 private:
  int64_t max_seq_len_ = 0;
  at::Tensor cos_, sin_;                // fp32 on CPU
  mutable at::Tensor dev_cos_, dev_sin_;  // copies on the last device used
};

// x: (B, H, S, hd); cos/sin: (S, hd/2). The result is in autocast's dtype
// where autocast is on for x's device (the dtype attention computes q and k
// in: the rotation in fp32, rounded once), else in result_type(x, cos).
FORGE_API at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// h + branch, the residual stream's add: h + branch's value and gradients,
// without the fp32 copy of a bf16 branch (a block's output under CPU bf16
// autocast) that ATen's add makes first. Blocks add their outputs with it.
FORGE_API at::Tensor residual_add(const at::Tensor& h, const at::Tensor& branch);

// One layer's KV cache: (B, Hkv, capacity, hd) each, post-RoPE.
struct FORGE_API LayerKV {
  at::Tensor k;
  at::Tensor v;
};

// What attention needs besides its input.
struct FORGE_API AttentionInputs {
  at::Tensor cos, sin;          // (S, hd/2) RoPE rows for the queries of this chunk
  int64_t start_pos = 0;        // cache fill before this chunk (0 in training)
  at::Tensor doc_ids;           // optional (B, S): attend only within the same document
  at::Tensor key_padding_mask;  // optional (B, S_kv) bool, true = real key
};

// Causal GQA attention over projected heads, RoPE already applied:
// q (B, H, S, hd), k/v (B, Hkv, S, hd). With `cache`, k/v are written at
// [start_pos, start_pos + S) and the queries attend to all cached keys up to
// their own position. KV heads are repeated n_rep = H / Hkv times
// consecutively. Rows that would have no allowed key are left unmasked (NaN
// guard). Returns (B, H, S, hd).
FORGE_API at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const AttentionInputs& in, LayerKV* cache);

// The attention probabilities causal_attention applies, written out:
// softmax(q k^T / sqrt(hd)) over the keys each query may see (causal, same
// document, real keys), (B, H, S, S_kv) in fp32. No KV cache. For
// interpretability (forge activations --attention), not for training.
FORGE_API at::Tensor attention_probabilities(const at::Tensor& q, const at::Tensor& k, const AttentionInputs& in);

struct AttentionOptions {
  int64_t dim = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  bool qk_norm = false;  // per-head RMSNorm on Q and K before RoPE
  double qk_norm_eps = 1e-5;
  bool qkv_bias = false;  // biases on q_proj, k_proj, v_proj (Qwen2)
  bool o_bias = false;    // bias on o_proj
};


// Projections that read one input (q, k and v; gate and up) as one GEMM over
// their concatenated weights. packs_projections(x) is true under autocast when
// x is not already in the autocast dtype: packed, x is cast once instead of
// once per projection, and its gradient is one GEMM's output instead of a sum
// of per-projection casts (fewer roundings). Without autocast (fp32, the HF
// parity checks) run each projection on its own, bit for bit as before.
// packed_linear(x, {a, b, ...}) is (..., sum of their out_features), in their
// order, for split_with_sizes; only under autocast. Of one linear it is l(x)
// in any mode. On a CPU under bf16 autocast, in training, it gives each weight
// its gradient in fp32 straight from a bf16 product (docs/performance.md).
FORGE_API bool packs_projections(const at::Tensor& x);
FORGE_API at::Tensor packed_linear(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> linears);
// projections(x, {a, b, ...}) is each linear's output, in their order, for
// every mode: when packs_projections(x), views of one packed_linear split by
// out_features; otherwise each linear on its own through packed_linear(x, {l}),
// which is l(x). Write q, k and v (or k and v) with it rather than branching
// on packs_projections yourself.
FORGE_API std::vector<at::Tensor> projections(const at::Tensor& x,
                                              std::initializer_list<const torch::nn::LinearImpl*> linears);

// Self-attention: q_proj, k_proj, v_proj, o_proj (bias-free unless the options
// say otherwise) [+ q_norm, k_norm].
class FORGE_API AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  ~AttentionImpl() override;
  at::Tensor forward(const at::Tensor& x, const AttentionInputs& in, LayerKV* cache = nullptr);
  // The pieces, for archs that route projections per modality:
  // (B, S, D) -> (B, heads, S, hd), after qk-norm, before RoPE.
  at::Tensor project_q(const at::Tensor& x);
  at::Tensor project_k(const at::Tensor& x);
  at::Tensor project_v(const at::Tensor& x);

  AttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  Norm q_norm{nullptr}, k_norm{nullptr};
  // Interpretability: when set, each forward without a KV cache also keeps
  // its attention probabilities (attention_probabilities, detached) in
  // `probabilities`. Off by default: the forward then pays one check.
  bool keep_probabilities = false;
  at::Tensor probabilities;
};
TORCH_MODULE(Attention);

// activation "silu": SwiGLU, down(silu(gate(x)) * up(x)); "gelu" (exact erf)
// or "relu": down(act(up(x))). Bias-free unless `bias`.
class FORGE_API MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t dim, int64_t hidden, std::string activation, bool bias = false);
  ~MlpImpl() override;
  at::Tensor forward(const at::Tensor& x);

  std::string activation;
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

// A bias-free linear whose weight can be tied to another module's tensor.
class FORGE_API TiedLinearImpl : public torch::nn::Module {
 public:
  TiedLinearImpl(int64_t in, int64_t out);
  ~TiedLinearImpl() override;
  at::Tensor forward(const at::Tensor& x);
  void tie(const at::Tensor& shared);  // share `shared` as this module's "weight"
  at::Tensor weight;
};
TORCH_MODULE(TiedLinear);

// `embedding.weight` (V, D).
class FORGE_API TokenEmbeddingImpl : public torch::nn::Module {
 public:
  TokenEmbeddingImpl(int64_t vocab, int64_t dim);
  ~TokenEmbeddingImpl() override;
  at::Tensor forward(const at::Tensor& tokens);
  torch::nn::Embedding embedding{nullptr};
};
TORCH_MODULE(TokenEmbedding);

// `proj.weight` (V, D), tied to the token embedding when tie_embeddings.
class FORGE_API OutputHeadImpl : public torch::nn::Module {
 public:
  OutputHeadImpl(int64_t dim, int64_t vocab);
  ~OutputHeadImpl() override;
  at::Tensor forward(const at::Tensor& h);
  TiedLinear proj{nullptr};
};
TORCH_MODULE(OutputHead);

// The attention options and RoPE scaling a ModelConfig describes.
FORGE_API AttentionOptions attention_options(const ModelConfig& cfg);
FORGE_API RopeScaling rope_scaling(const ModelConfig& cfg);

// The reference's hidden-size rule (ModelConfig::ffn_hidden()).
FORGE_API int64_t ffn_hidden_size(int64_t dim, double multiplier, std::optional<int64_t> explicit_hidden);

// Zero every parameter of `module` whose name ends with one of `suffixes`.
FORGE_API void zero_parameters(torch::nn::Module& module, const std::vector<std::string>& suffixes);

// Every parameter (with its name) of `module`, each tensor once even when
// tied under several names (the first name wins).
FORGE_API std::vector<std::pair<std::string, at::Tensor>> unique_named_parameters(
    const torch::nn::Module& module);

}  // namespace forge::nn
