// linear_cross_entropy (loss.h): the output head and the token cross-entropy
// in one autograd function, chunk by chunk over rows.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "core/model/bf16_weights.h"
#include "core/training/loss.h"
#include "core/util/cpu_gemm.h"
#include "core/util/cpu_vec.h"
#include "core/util/row_max.h"
#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Logits elements per chunk. On a CPU 256 MB of logits in the compute dtype, which the loss turns into their
// gradient in place (128M bf16 values: the small recipe's 1536 rows of a 32k vocabulary in one chunk, whose
// GEMMs run faster than those of two). On a GPU 256M (1 GiB of fp32, 2093 rows of Llama-3's 128k): fewer, larger
// chunks keep the head's GEMMs efficient, and the full logits would be (B x T x vocab), 7.6 GB in fp32 at
// 8 x 1852 text tokens of a 128k vocabulary.
int64_t chunk_elements(const at::Device& d, at::ScalarType dtype) {
  return d.is_cpu() ? (int64_t{256} << 20) / static_cast<int64_t>(c10::elementSize(dtype)) : int64_t{1} << 28;
}

struct ChunkSoftmax {
  at::Tensor lse, picked;  // (c) fp32
  at::Tensor grad;         // (c, V) in the logits' dtype, or undefined
};

// ATen's ops over fp32 logits (any device).
ChunkSoftmax chunk_softmax_aten(const at::Tensor& logits_in, const at::Tensor& t, const at::Tensor& valid,
                                double z_loss_weight, double denom, bool want_grad) {
  const at::Tensor safe_t = at::where(valid, t, at::zeros_like(t)).unsqueeze(1);
  at::Tensor logits = logits_in.to(at::kFloat);
  ChunkSoftmax out{at::logsumexp(logits, 1), logits.gather(1, safe_t).squeeze(1), at::Tensor()};
  if (!want_grad) return out;
  at::Tensor g = logits.sub_(out.lse.unsqueeze(1)).exp_();  // in place over the logits
  g.mul_(((1.0 + 2.0 * z_loss_weight * out.lse) / denom).unsqueeze(1));
  g.masked_fill_(valid.logical_not().unsqueeze(1), 0.0);  // ignored rows: exact zeros, whatever their logits
  g.scatter_add_(1, safe_t, (valid.to(at::kFloat) * (-1.0 / denom)).unsqueeze(1));
  out.grad = g.to(logits_in.scalar_type());
  return out;
}

using namespace cpu_vec;

// A row of V logits whose maximum is m: its exponentials, kept in `e` (V fp32 values, 128 KB for a 32k
// vocabulary, still in the cache when read again), and their sum in one read; for the gradient one write over
// the logits themselves, softmax = e / sum with no second exponential.
template <typename T>
FORGE_CLONES void softmax_row(T* l, float* e, int64_t V, float m, int64_t target, bool want_grad, float z,
                              float inv_denom, float* lse, float* picked) {
  constexpr int W = 16;  // running sums the vectoriser keeps in registers
  float acc[W] = {};
  float sum = 0.0f;
  int64_t j = 0;
  for (; j + W <= V; j += W)
    for (int k = 0; k < W; ++k) acc[k] += e[j + k] = exp_approx(load(l[j + k]) - m);
  for (; j < V; ++j) sum += e[j] = exp_approx(load(l[j]) - m);
  for (float a : acc) sum += a;
  const float row_lse = m + std::log(sum);
  const bool valid = target >= 0;
  *lse = row_lse;
  *picked = valid ? load(l[target]) : 0.0f;
  if (!want_grad) return;
  if (!valid) {  // exact zeros, whatever the row's logits (an inf times 0 would be NaN)
    for (j = 0; j < V; ++j) l[j] = store<T>(0.0f);
    return;
  }
  const float f = (1.0f + 2.0f * z * row_lse) * inv_denom / sum;
  for (j = 0; j < V; ++j) l[j] = store<T>(e[j] * f);
  l[target] = store<T>(e[target] * f - inv_denom);
}

// The same on a CPU, fp32 or bf16 logits, in place: a max, then one read of each row and one write, where
// ATen's ops make seven full passes over fp32 copies.
ChunkSoftmax chunk_softmax_cpu(at::Tensor& logits, const at::Tensor& t, double z_loss_weight, double denom,
                               bool want_grad) {
  RECORD_FUNCTION("forge::softmax_cross_entropy_rows", {});  // named in `forge bench --profile`
  const int64_t c = logits.size(0), V = logits.size(1);
  const at::Tensor tc = t.to(at::kLong).contiguous();
  const int64_t* tp = tc.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < c; ++r)
    if (tp[r] != -100 && (tp[r] < 0 || tp[r] >= V))
      throw InvalidArgument(fmt::format("loss: target token id {} is outside the vocabulary of {}", tp[r], V));
  auto f32 = logits.options().dtype(at::kFloat);
  ChunkSoftmax out{at::empty({c}, f32), at::empty({c}, f32), want_grad ? logits : at::Tensor()};
  float *lse = out.lse.mutable_data_ptr<float>(), *picked = out.picked.mutable_data_ptr<float>();
  const float z = static_cast<float>(z_loss_weight), inv_denom = static_cast<float>(1.0 / denom);
  // Each row's maximum, exact and NaN-keeping, in a pass of its own (core/util/row_max.h): bf16 rows by integer
  // maxima of their bits, fp32 rows by ATen's amax (a select-based float max does not vectorise without
  // -ffinite-math-only, which would lose NaN).
  const at::Tensor row_max = cpu_rows::row_max(logits);
  const float* mp = row_max.const_data_ptr<float>();
  auto rows = [&]<typename T>(T* l) {
    at::parallel_for(0, c, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> e(static_cast<size_t>(V));
      for (int64_t r = r0; r < r1; ++r)
        softmax_row<T>(l + r * V, e.data(), V, mp[r], tp[r] == -100 ? -1 : tp[r], want_grad, z, inv_denom, lse + r,
                       picked + r);
    });
  };
  if (logits.scalar_type() == at::kFloat)
    rows(logits.mutable_data_ptr<float>());
  else
    rows(logits.mutable_data_ptr<c10::BFloat16>());
  return out;
}

// The products of the head's backward. On a CPU with bf16 logits, MKL's bf16 -> fp32 GEMM (core/util/cpu_gemm.h)
// writes fp32 straight into the fp32 gradients: over the small recipe's 32k vocabulary 1.8-2.4 times the rate of
// ATen's bf16 products, whose outputs would then be cast and summed. Elsewhere ATen's products in the logits' dtype.
// W and h are in the logits' dtype too (cast to it before the forward's product).
bool fp32_out_products(const at::Tensor& gd) {
  return gd.device().is_cpu() && gd.scalar_type() == at::kBFloat16 && cpu_gemm::available();
}

// dh = dlogits W into `out` (rows of grad_h, in the hidden's dtype).
void head_input_grad(const at::Tensor& gd, const at::Tensor& W, at::Tensor out) {
  if (fp32_out_products(gd) && out.scalar_type() == at::kFloat)
    cpu_gemm::mm_bf16_f32(gd, W, out, false);
  else
    out.copy_(at::mm(gd, W));
}

// dW += dlogits^T h, summed over chunks in fp32 (grad_w is undefined before the first).
void head_weight_grad(const at::Tensor& gd, const at::Tensor& h, at::Tensor& grad_w, at::IntArrayRef w_sizes) {
  if (fp32_out_products(gd)) {
    const bool first = !grad_w.defined();
    if (first) grad_w = at::empty(w_sizes, gd.options().dtype(at::kFloat));
    cpu_gemm::mm_bf16_f32(gd.t(), h, grad_w, !first);
    return;
  }
  at::Tensor part = at::mm(gd.t(), h);
  grad_w = grad_w.defined() ? grad_w.add_(part) : part.to(at::kFloat);
}

// The rows whose targets count (!= -100), in order, or undefined where all of them do. The others (a caption's
// prompt, the padding up to max_text_len: most rows of a batch of short captions) add nothing to the loss and get
// zero gradients, so they skip the head's products, 6 V D FLOPs a row over forward and backward, and the softmax.
// The count comes from the host, so on a GPU nonzero_static finds them with no device sync.
at::Tensor counted_rows(const at::Tensor& targets, int64_t n_valid) {
  if (n_valid == targets.size(0)) return {};
  return at::nonzero_static(targets.ne(-100), n_valid).squeeze(1);
}

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  // hidden (N, D), weight (V, D), all_targets (N) with -100 = ignored, n_valid of them not; returns the scalar
  // loss. Only the counted rows go through the head.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& all_targets, double z_loss_weight, int64_t n_valid, at::ScalarType dtype,
                            bool grad_enabled) {
    const int64_t V = weight.size(0);
    // Gradients are made here, in forward: only when autograd will ask for them.
    const bool want_h = grad_enabled && hidden.requires_grad(), want_w = grad_enabled && weight.requires_grad();
    const double denom = static_cast<double>(std::max<int64_t>(n_valid, 1));
    // A bf16 head on a CPU reads the weight's kept copy (core/model/bf16_weights.h) rather than casting it.
    const bool kept = dtype == at::kBFloat16 && weight.scalar_type() == at::kFloat && weight.device().is_cpu();
    const at::Tensor W = kept ? bf16_weights::packed({weight}) : weight.to(dtype);
    const at::Tensor rows = counted_rows(all_targets, n_valid);
    const at::Tensor H = (rows.defined() ? hidden.index_select(0, rows) : hidden).to(dtype);
    const at::Tensor targets = rows.defined() ? all_targets.index_select(0, rows) : all_targets;
    const int64_t N = H.size(0);
    auto f32 = hidden.options().dtype(at::kFloat).requires_grad(false);
    at::Tensor grad_h = want_h ? at::empty({N, hidden.size(1)}, hidden.options().requires_grad(false)) : at::Tensor();
    at::Tensor grad_w;  // fp32 sum over chunks
    at::Tensor loss_sum = at::zeros({}, f32), z_sum = at::zeros({}, f32);
    const int64_t chunk = std::max<int64_t>(1, chunk_elements(hidden.device(), dtype) / std::max<int64_t>(V, 1));
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t c = std::min(chunk, N - r0);
      const at::Tensor h = H.narrow(0, r0, c), t = targets.narrow(0, r0, c);
      const at::Tensor valid = t.ne(-100);
      at::Tensor logits = at::mm(h, W.t());  // (c, V) in dtype
      const bool cpu_loop = logits.device().is_cpu() && logits.is_contiguous() &&
                            (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16);
      const bool want_grad = want_h || want_w;
      const ChunkSoftmax sm = cpu_loop ? chunk_softmax_cpu(logits, t, z_loss_weight, denom, want_grad)
                                       : chunk_softmax_aten(logits, t, valid, z_loss_weight, denom, want_grad);
      // where, not a product with 0: an ignored row's inf or NaN logits must not reach the sum (as cross_entropy).
      const at::Tensor zero = at::zeros({}, sm.lse.options());
      loss_sum.add_(at::where(valid, sm.lse - sm.picked, zero).sum());
      if (z_loss_weight > 0) z_sum.add_(at::where(valid, sm.lse * sm.lse, zero).sum());
      if (!want_grad) continue;
      const at::Tensor& gd = sm.grad;
      if (want_h) head_input_grad(gd, W, grad_h.narrow(0, r0, c));
      if (want_w) head_weight_grad(gd, h, grad_w, weight.sizes());
    }
    if (grad_h.defined() && rows.defined())  // the skipped rows' gradients are exact zeros
      grad_h = at::zeros(hidden.sizes(), grad_h.options()).index_copy_(0, rows, grad_h);
    ctx->saved_data["grad_h"] = grad_h;
    if (want_w && !grad_w.defined()) grad_w = at::zeros(weight.sizes(), f32);  // no rows at all
    ctx->saved_data["grad_w"] = grad_w.defined() ? grad_w.to(weight.scalar_type()) : grad_w;
    return (loss_sum + z_loss_weight * z_sum) / denom;
  }

  // The gradients were made for an upstream gradient of 1 and are scaled by the real one here. They leave the
  // context, so that autograd holds the only reference and accumulates them without a copy; on a CPU, where
  // reading the upstream gradient costs no device sync, a 1 (loss.backward() over one micro-batch) hands them
  // over as they are, without a pass over the head's (V, D) gradient.
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    if (!ctx->saved_data.count("grad_w"))
      throw InvalidArgument("loss: linear_cross_entropy's backward ran twice over one forward; its gradients are "
                            "handed over once (run the forward again)");
    const at::Tensor& g = grad_out[0];
    const bool unit = g.device().is_cpu() && g.numel() == 1 && g.item<double>() == 1.0;
    auto take = [&](const char* key) {
      at::Tensor t = ctx->saved_data[key].toTensor();
      ctx->saved_data.erase(key);
      return !t.defined() || unit ? t : t * g.to(t.scalar_type());
    };
    at::Tensor gh = take("grad_h"), gw = take("grad_w");
    return {gh, gw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

LossValue linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                               double z_loss_weight, std::optional<int64_t> valid_targets) {
  if (hidden.dim() != 3 || targets.dim() != 2 || hidden.size(0) != targets.size(0) ||
      hidden.size(1) != targets.size(1) || weight.dim() != 2 || weight.size(1) != hidden.size(2))
    throw InvalidArgument(fmt::format("loss: hidden {}, head weight {} and targets {} do not align",
                                      util::shape(hidden), util::shape(weight), util::shape(targets)));
  const at::DeviceType dev = hidden.device().type();
  const at::ScalarType dtype = at::autocast::is_autocast_enabled(dev) ? at::autocast::get_autocast_dtype(dev)
                                                                      : at::promote_types(hidden.scalar_type(),
                                                                                          weight.scalar_type());
  const at::Tensor tgt = targets.flatten();
  // The count decides which rows go through the head: checked where that costs no device sync.
  const bool count_here = !valid_targets || tgt.device().is_cpu();
  const int64_t n = count_here ? tgt.ne(-100).sum().item<int64_t>() : *valid_targets;
  if (valid_targets && *valid_targets != n)
    throw InvalidArgument(fmt::format("loss: valid_targets = {}, but {} of the {} targets are not -100",
                                      *valid_targets, n, tgt.numel()));
  at::Tensor loss = LinearCrossEntropy::apply(hidden.flatten(0, 1), weight, tgt, z_loss_weight, n, dtype,
                                              at::GradMode::is_enabled());
  return LossValue{loss, n};
}

}  // namespace forge
