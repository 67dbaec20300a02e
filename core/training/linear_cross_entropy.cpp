// linear_cross_entropy (loss.h): the output head and the token cross-entropy
// in one autograd function, chunk by chunk over rows.
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include <fmt/format.h>

#include "core/training/loss.h"
#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Logits elements per chunk: on a CPU 32M fp32 values (128 MB, e.g. 1048 rows of a 32k vocabulary), on a GPU
// 256M (1 GiB, 2093 rows of Llama-3's 128k): fewer, larger chunks keep the head's GEMMs efficient, and the
// full logits would be (B x T x vocab), 7.6 GB in fp32 at 8 x 1852 text tokens of a 128k vocabulary.
int64_t chunk_elements(const at::Device& d) { return d.is_cpu() ? int64_t{1} << 25 : int64_t{1} << 28; }

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  // hidden (N, D), weight (V, D), targets (N) with -100 = ignored; returns the scalar loss.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, double z_loss_weight, int64_t n_valid, at::ScalarType dtype,
                            bool grad_enabled) {
    const int64_t N = hidden.size(0), V = weight.size(0);
    // Gradients are made here, in forward: only when autograd will ask for them.
    const bool want_h = grad_enabled && hidden.requires_grad(), want_w = grad_enabled && weight.requires_grad();
    const double denom = static_cast<double>(std::max<int64_t>(n_valid, 1));
    const at::Tensor W = weight.to(dtype), H = hidden.to(dtype);
    auto f32 = hidden.options().dtype(at::kFloat).requires_grad(false);
    at::Tensor grad_h = want_h ? at::empty({N, hidden.size(1)}, hidden.options().requires_grad(false)) : at::Tensor();
    at::Tensor grad_w;  // fp32 sum over chunks
    at::Tensor loss_sum = at::zeros({}, f32), z_sum = at::zeros({}, f32);
    const int64_t chunk = std::max<int64_t>(1, chunk_elements(hidden.device()) / std::max<int64_t>(V, 1));
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t c = std::min(chunk, N - r0);
      const at::Tensor h = H.narrow(0, r0, c), t = targets.narrow(0, r0, c);
      const at::Tensor valid = t.ne(-100);
      const at::Tensor safe_t = at::where(valid, t, at::zeros_like(t)).unsqueeze(1);
      const at::Tensor validf = valid.to(at::kFloat);
      at::Tensor logits = at::mm(h, W.t()).to(at::kFloat);  // (c, V)
      const at::Tensor lse = at::logsumexp(logits, 1);
      const at::Tensor picked = logits.gather(1, safe_t).squeeze(1);
      // where, not a product with 0: an ignored row's inf or NaN logits must not reach the sum (as cross_entropy).
      const at::Tensor zero = at::zeros({}, lse.options());
      loss_sum.add_(at::where(valid, lse - picked, zero).sum());
      if (z_loss_weight > 0) z_sum.add_(at::where(valid, lse * lse, zero).sum());
      if (!want_h && !want_w) continue;
      // d loss / d logits = (softmax * (1 + 2 z lse) - onehot) * valid / denom, in place over the logits.
      at::Tensor g = logits.sub_(lse.unsqueeze(1)).exp_();
      g.mul_(((1.0 + 2.0 * z_loss_weight * lse) / denom).unsqueeze(1));
      g.masked_fill_(valid.logical_not().unsqueeze(1), 0.0);  // ignored rows: exact zeros, whatever their logits
      g.scatter_add_(1, safe_t, (validf * (-1.0 / denom)).unsqueeze(1));
      const at::Tensor gd = g.to(dtype);
      if (want_h) grad_h.narrow(0, r0, c).copy_(at::mm(gd, W));
      if (want_w) {
        at::Tensor part = at::mm(gd.t(), h);
        grad_w = grad_w.defined() ? grad_w.add_(part) : part.to(at::kFloat);
      }
    }
    ctx->saved_data["grad_h"] = grad_h;
    if (want_w && !grad_w.defined()) grad_w = at::zeros(weight.sizes(), f32);  // no rows at all
    ctx->saved_data["grad_w"] = grad_w.defined() ? grad_w.to(weight.scalar_type()) : grad_w;
    return (loss_sum + z_loss_weight * z_sum) / denom;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor& g = grad_out[0];
    at::Tensor gh = ctx->saved_data["grad_h"].toTensor(), gw = ctx->saved_data["grad_w"].toTensor();
    return {gh.defined() ? gh * g.to(gh.scalar_type()) : at::Tensor(), gw.defined() ? gw * g.to(gw.scalar_type())
                                                                                    : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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
  const int64_t n = valid_targets ? *valid_targets : tgt.ne(-100).sum().item<int64_t>();
  at::Tensor loss = LinearCrossEntropy::apply(hidden.flatten(0, 1), weight, tgt, z_loss_weight, n, dtype,
                                              at::GradMode::is_enabled());
  return LossValue{loss, n};
}

}  // namespace forge
