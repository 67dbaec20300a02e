// linear_cpu.h: bf16 forward, fp32 weight gradients from MKL's bf16 -> fp32 GEMM.
#include "core/model/linear_cpu.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/modules/linear.h>

#include <vector>

#include "core/model/bf16_weights.h"
#include "core/util/cpu_gemm.h"
#include "core/util/cpu_vec.h"
#include "forge/error.h"

namespace forge::fused {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Below this many reduced values, oneDNN's bf16 product and a cast beat MKL's fp32-out product for an input
// gradient (measured on the development machine: 2048 x 512 outputs, 1.9 against 1.5 TFLOP/s at 512, 1.8
// against 2.3 at 3072).
constexpr int64_t kFp32OutMinK = 2048;

// Row offsets of each weight's block in the packed (n, in) matrix.
std::vector<int64_t> offsets(const std::vector<int64_t>& rows) {
  std::vector<int64_t> off(rows.size(), 0);
  for (size_t i = 1; i < rows.size(); ++i) off[i] = off[i - 1] + rows[i - 1];
  return off;
}

struct LinearBf16 : torch::autograd::Function<LinearBf16> {
  // x (..., in); weights[i] (n_i, in) fp32; biases[j] (n_k) fp32 for the weight k = bias_of[j] (linears without a
  // bias have none in the list: an undefined tensor cannot be an autograd input).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                            std::vector<int64_t> bias_of) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t in = x.size(-1);
    std::vector<int64_t> rows;
    for (const auto& w : weights) rows.push_back(w.size(0));
    const std::vector<int64_t> off = offsets(rows);
    const int64_t n = off.back() + rows.back();
    // The weights' bf16 copy, kept between steps where the optimizer writes it (core/model/bf16_weights.h).
    const at::Tensor wb = bf16_weights::packed(weights);
    bool want_dw = false;
    for (const auto& w : weights) want_dw = want_dw || w.requires_grad();
    // Cast before flattening: the cast of a strided view (a modality's rows in MoT) is already contiguous, where
    // flattening it first would copy it once more in fp32.
    const at::Tensor xb = x.to(at::kBFloat16).reshape({-1, in}).contiguous();
    at::Tensor y;
    if (biases.empty()) {
      y = at::mm(xb, wb.t());
    } else {
      at::Tensor bb = at::zeros({n}, wb.options());
      for (size_t j = 0; j < biases.size(); ++j)
        bb.narrow(0, off[bias_of[j]], rows[bias_of[j]]).copy_(biases[j]);
      y = at::addmm(bb, xb, wb.t());
    }
    // As ATen's mm saves them: the input only for weight gradients, the weights only for the input's.
    ctx->save_for_backward({want_dw ? xb : at::Tensor(), x.requires_grad() ? wb : at::Tensor()});
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["bias_of"] = bias_of;
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    std::vector<int64_t> out_sizes = x.sizes().vec();
    out_sizes.back() = n;
    return y.view(out_sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    RECORD_FUNCTION("forge::linear_bf16_backward", {});
    if (at::GradMode::is_enabled())
      throw InvalidArgument("linear_bf16: its backward is not differentiable (no create_graph / double backward); "
                            "run without CPU bf16 autocast for higher-order gradients");
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &xb = saved[0], &wb = saved[1];
    const auto rows = ctx->saved_data["rows"].toIntVector();
    const auto bias_of = ctx->saved_data["bias_of"].toIntVector();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const std::vector<int64_t> off = offsets(rows);
    const size_t nw = rows.size(), nb = bias_of.size();
    const int64_t n = off.back() + rows.back();
    const at::Tensor dy = grad_out[0].to(at::kBFloat16).reshape({-1, n}).contiguous();
    variable_list grads(1 + nw + nb + 1);  // the last for bias_of, not a tensor
    if (ctx->needs_input_grad(0)) {
      if (x_dtype == at::kFloat && n >= kFp32OutMinK)
        grads[0] = cpu_gemm::mm_bf16_f32(dy, wb).view(x_sizes);
      else
        grads[0] = at::mm(dy, wb).to(x_dtype).view(x_sizes);
    }
    bool any_w = false;
    for (size_t i = 0; i < nw; ++i) any_w = any_w || ctx->needs_input_grad(1 + i);
    if (any_w) {
      // One fp32 (n, in) product for all the weights; each weight's gradient is its block of rows, which
      // autograd adopts as the .grad without a copy.
      const at::Tensor dw = cpu_gemm::mm_bf16_f32(dy.t(), xb);
      for (size_t i = 0; i < nw; ++i)
        if (ctx->needs_input_grad(1 + i)) grads[1 + i] = dw.narrow(0, off[i], rows[i]);
    }
    if (nb > 0) {
      const at::Tensor db = dy.sum(0, false, at::kFloat);
      for (size_t j = 0; j < nb; ++j)
        if (ctx->needs_input_grad(1 + nw + j)) grads[1 + nw + j] = db.narrow(0, off[bias_of[j]], rows[bias_of[j]]);
    }
    return grads;
  }
};

}  // namespace

bool linear_bf16_applies(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> ls) {
  if (!x.device().is_cpu() || !at::autocast::is_autocast_enabled(at::kCPU) ||
      at::autocast::get_autocast_dtype(at::kCPU) != at::kBFloat16 || ls.size() == 0)
    return false;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) return false;
  // Only for training: without autograd (evaluation, generation) autocast's weight cache casts each weight once
  // per autocast scope, where this function would cast it again at every call.
  std::vector<at::Tensor> inputs{x};
  for (const auto* l : ls) inputs.push_back(l->weight);
  if (!cpu_vec::autograd_wanted(inputs)) return false;
  for (const auto* l : ls) {
    if (l->weight.scalar_type() != at::kFloat || !l->weight.device().is_cpu() || l->weight.size(1) != x.size(-1))
      return false;
    if (l->bias.defined() && l->bias.scalar_type() != at::kFloat) return false;
  }
  return cpu_gemm::available();
}

at::Tensor linear_bf16(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> ls) {
  std::vector<at::Tensor> w, b;
  std::vector<int64_t> bias_of;
  for (const auto* l : ls) {
    if (l->bias.defined()) {
      bias_of.push_back(static_cast<int64_t>(w.size()));
      b.push_back(l->bias);
    }
    w.push_back(l->weight);
  }
  return LinearBf16::apply(x, at::TensorList(w), at::TensorList(b), bias_of);
}

}  // namespace forge::fused
