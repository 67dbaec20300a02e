// fused_cpu.h: forwards by ATen's own ops, backwards in one pass per row.
#include "core/model/fused_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <fmt/format.h>

#include "core/model/rms_norm_cpu.h"
#include "core/model/silu_mul_cpu.h"
#include "core/util/cpu_vec.h"
#include "core/util/tensor.h"
#include "forge/error.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace forge::fused {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using namespace forge::cpu_vec;

bool fusable(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
}

// ------------------------------------------------------------ RMSNorm

// One pass with ATen's bits where forge follows ATen's kernels (core/model/rms_norm_cpu.h), else ATen's ops.
at::Tensor rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor* rstd_out) {
  if (at::Tensor y = rms_norm_exact(x, weight, eps, rstd_out); y.defined()) return y;
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor rstd = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (rstd_out) *rstd_out = rstd;
  return (xf * rstd * weight.to(at::kFloat)).to(x.scalar_type());
}

// Σ a[j] * b[j] * c[j] in 16 running sums, a shape the vectoriser takes
// (a single float accumulator it may not reorder).
template <typename T>
inline float dot3(const T* a, const float* b, const T* c, int64_t n) {
  float acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; ++k) acc[k] += load(a[j + k]) * b[j + k] * load(c[j + k]);
  float sum = 0.0f;
  for (; j < n; ++j) sum += load(a[j]) * b[j] * load(c[j]);
  for (float v : acc) sum += v;
  return sum;
}

// Rows [begin, end): dy0 = gy * w; dx = rstd * (dy0 - y0 * mean(dy0 * y0)) with
// y0 = x * rstd; and, when dw is given, dw += gy * y0.
template <typename T>
FORGE_CLONES void rms_norm_backward_rows(const T* x, const T* gy, const float* w, const float* rstd, T* dx, float* dw,
                                         int64_t begin, int64_t end, int64_t D) {
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * D;
    const T* gr = gy + r * D;
    T* dxr = dx + r * D;
    const float s = rstd[r];
    const float m = dot3(gr, w, xr, D) * s / static_cast<float>(D);
    for (int64_t j = 0; j < D; ++j) dxr[j] = store<T>(s * (load(gr[j]) * w[j] - load(xr[j]) * s * m));
    if (dw)
      for (int64_t j = 0; j < D; ++j) dw[j] += load(gr[j]) * load(xr[j]) * s;
  }
}

template <typename T>
void rms_norm_backward(const at::Tensor& x, const at::Tensor& gy, const at::Tensor& w, const at::Tensor& rstd,
                       at::Tensor& dx, at::Tensor* dw_parts, int64_t blocks) {
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  const T *xp = x.const_data_ptr<T>(), *gp = gy.const_data_ptr<T>();
  const float *wp = w.const_data_ptr<float>(), *sp = rstd.const_data_ptr<float>();
  T* dxp = dx.mutable_data_ptr<T>();
  float* parts = dw_parts ? dw_parts->mutable_data_ptr<float>() : nullptr;
  // Block b of rows owns row b of the partial sums of dw.
  const int64_t per = (rows + blocks - 1) / blocks;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      rms_norm_backward_rows<T>(xp, gp, wp, sp, dxp, parts ? parts + b * D : nullptr, std::min(rows, b * per),
                                std::min(rows, (b + 1) * per), D);
  });
}

struct RmsNorm : torch::autograd::Function<RmsNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    at::Tensor rstd;
    at::Tensor y = rms_norm_forward(x, weight, eps, &rstd);
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor x = saved[0].contiguous(), weight = saved[1];
    const at::Tensor rstd = saved[2].contiguous();
    const at::Tensor gy = grad_out[0].to(x.scalar_type()).contiguous();
    const at::Tensor w = weight.to(at::kFloat).contiguous();
    const bool want_w = ctx->needs_input_grad(1);
    at::Tensor dx = at::empty_like(x);
    // Per-thread fp32 partial sums of dw, added up once at the end.
    const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
    const int64_t blocks = std::clamp<int64_t>(rows / grain_rows(D), 1, at::get_num_threads());
    at::Tensor dw_parts = want_w ? at::zeros({blocks, D}, w.options()) : at::Tensor();
    if (x.scalar_type() == at::kFloat)
      rms_norm_backward<float>(x, gy, w, rstd, dx, want_w ? &dw_parts : nullptr, blocks);
    else
      rms_norm_backward<c10::BFloat16>(x, gy, w, rstd, dx, want_w ? &dw_parts : nullptr, blocks);
    at::Tensor dw = want_w ? dw_parts.sum(0).to(weight.scalar_type()) : at::Tensor();
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(), dw, at::Tensor()};
  }
};

// ------------------------------------------------------------ SwiGLU

// One pass with ATen's bits where the CPU has its AVX-512 kernels (core/model/silu_mul_cpu.h), else its two ops.
at::Tensor silu_mul_forward(const at::Tensor& gate, const at::Tensor& up) {
  if (at::Tensor y = silu_mul_exact(gate, up); y.defined()) return y;
  return at::silu(gate) * up;
}

// d(silu(g) * u) over n elements: dg = gy * u * s * (1 + g * (1 - s)), du = gy * g * s, s = sigmoid(g).
template <typename T>
FORGE_CLONES void silu_mul_backward_span(const T* g, const T* u, const T* gy, T* dg, T* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float gv = load(g[i]), yv = load(gy[i]);
    const float s = 1.0f / (1.0f + exp_approx(-gv));
    dg[i] = store<T>(yv * load(u[i]) * s * (1.0f + gv * (1.0f - s)));
    du[i] = store<T>(yv * gv * s);
  }
}

// Rows of H gate and up values `stride` apart (H for separate tensors, 2H for one packed gate|up tensor, whose
// gradient is packed alike); gy has rows of H.
struct SwigluRows {
  at::Tensor g, u, dg, du;  // g and u may be views into one packed tensor, dg and du into its gradient
  int64_t rows, H, stride;
};

template <typename T>
void silu_mul_backward_rows(const SwigluRows& r, const at::Tensor& gy) {
  const T *gp = r.g.const_data_ptr<T>(), *up = r.u.const_data_ptr<T>(), *yp = gy.const_data_ptr<T>();
  T *dgp = r.dg.mutable_data_ptr<T>(), *dup = r.du.mutable_data_ptr<T>();
  const int64_t H = r.H, st = r.stride;
  at::parallel_for(0, r.rows, grain_rows(H), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i)
      silu_mul_backward_span<T>(gp + i * st, up + i * st, yp + i * H, dgp + i * st, dup + i * st, H);
  });
}

void silu_mul_backward(const SwigluRows& r, const at::Tensor& gy) {
  if (gy.scalar_type() == at::kFloat)
    silu_mul_backward_rows<float>(r, gy);
  else
    silu_mul_backward_rows<c10::BFloat16>(r, gy);
}

struct SiluMul : torch::autograd::Function<SiluMul> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return silu_mul_forward(gate, up);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor g = saved[0].contiguous(), u = saved[1].contiguous();
    const at::Tensor gy = grad_out[0].to(g.scalar_type()).contiguous();
    at::Tensor dg = at::empty_like(g), du = at::empty_like(u);
    const int64_t H = g.dim() ? g.size(-1) : 1;
    silu_mul_backward({g, u, dg, du, H ? g.numel() / H : 0, H, H}, gy);
    return {ctx->needs_input_grad(0) ? dg : at::Tensor(), ctx->needs_input_grad(1) ? du : at::Tensor()};
  }
};

at::Tensor silu_mul_packed_forward(const at::Tensor& gate_up) {
  const auto parts = gate_up.chunk(2, -1);
  return silu_mul_forward(parts[0], parts[1]);
}

struct SiluMulPacked : torch::autograd::Function<SiluMulPacked> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_up) {
    ctx->save_for_backward({gate_up});
    return silu_mul_packed_forward(gate_up);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor gu = ctx->get_saved_variables()[0].contiguous();
    const at::Tensor gy = grad_out[0].to(gu.scalar_type()).contiguous();
    at::Tensor d = at::empty_like(gu);
    const int64_t H = gu.size(-1) / 2;
    // The pointers of the up halves start H values into each buffer; narrow keeps them in the tensors' storage.
    silu_mul_backward({gu, gu.narrow(-1, H, H), d, d.narrow(-1, H, H), H ? gy.numel() / H : 0, H, 2 * H}, gy);
    return {d};
  }
};

// ------------------------------------------------------------ RoPE

// A 4-d tensor's rows (all but the last dim), walked by their strides.
struct Rows {
  int64_t size[3], stride[3];
  explicit Rows(const at::Tensor& t) {
    for (int d = 0; d < 3; ++d) size[d] = t.size(d), stride[d] = t.stride(d);
  }
  int64_t offset(int64_t r) const {
    const int64_t i2 = r % size[2], i1 = (r / size[2]) % size[1], i0 = r / (size[2] * size[1]);
    return i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
  }
  int64_t count() const { return size[0] * size[1] * size[2]; }
};

// One row of half-width H: the forward (x1 c - x2 s, x2 c + x1 s), or with
// `inverse` the backward (g1 c + g2 s, g2 c - g1 s), the rotation by -angle.
template <typename In, typename Out>
FORGE_CLONES void rope_row(const In* x, const float* c, const float* s, Out* y, int64_t H, bool inverse) {
  const float sign = inverse ? -1.0f : 1.0f;
  for (int64_t j = 0; j < H; ++j) {
    const float x1 = load(x[j]), x2 = load(x[j + H]), sj = sign * s[j];
    y[j] = store<Out>(x1 * c[j] - x2 * sj);
    y[j + H] = store<Out>(x2 * c[j] + x1 * sj);
  }
}

template <typename In, typename Out>
void rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& y, bool inverse) {
  const Rows xr(x), yr(y), cr(cos);
  const int64_t H = x.size(3) / 2;
  const In* xp = x.const_data_ptr<In>();
  const float *cp = cos.const_data_ptr<float>(), *sp = sin.const_data_ptr<float>();
  Out* yp = y.mutable_data_ptr<Out>();
  at::parallel_for(0, xr.count(), grain_rows(2 * H), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t co = cr.offset(r);
      rope_row<In, Out>(xp + xr.offset(r), cp + co, sp + co, yp + yr.offset(r), H, inverse);
    }
  });
}

// y = rotate(x) into y, both 4-d with a unit last stride, cos/sin fp32 (.., H)
// expanded to x's rows.
void rope_apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& y, bool inverse) {
  const bool xb = x.scalar_type() == at::kBFloat16, yb = y.scalar_type() == at::kBFloat16;
  if (xb && yb) rope_rows<c10::BFloat16, c10::BFloat16>(x, cos, sin, y, inverse);
  else if (xb) rope_rows<c10::BFloat16, float>(x, cos, sin, y, inverse);
  else if (yb) rope_rows<float, c10::BFloat16>(x, cos, sin, y, inverse);
  else rope_rows<float, float>(x, cos, sin, y, inverse);
}

// cos or sin as the kernel reads it: fp32, unit last stride, expanded over x's rows.
at::Tensor rope_table(const at::Tensor& t, const at::Tensor& x) {
  return t.contiguous().expand({x.size(0), x.size(1), x.size(2), x.size(3) / 2});
}

// The plain expression, and what every path off the fused one computes.
at::Tensor rope_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

// The loops' layout: x 4-d, fp32 or bf16, unit last stride, under autograd; cos and sin fp32 CPU tables without
// gradients that broadcast to x's rows (as the plain expression requires).
bool rope_fusable(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const bool tables = cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.device().is_cpu() &&
                      cos.sizes().equals(sin.sizes()) && !cos.requires_grad() && !sin.requires_grad();
  if (!fusable(x) || !tables || x.dim() != 4 || x.size(3) % 2 != 0 || x.stride(3) != 1 || !autograd_wanted({x}) ||
      cos.dim() > 4 || cos.size(-1) != x.size(3) / 2)
    return false;
  for (int64_t d = 1; d < cos.dim() && d <= 3; ++d) {
    const int64_t cs = cos.size(cos.dim() - 1 - d), xs = x.size(3 - d);
    if (cs != xs && cs != 1) return false;
  }
  return true;
}

struct Rope : torch::autograd::Function<Rope> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                            at::ScalarType out_dtype) {
    const at::Tensor c = rope_table(cos, x), s = rope_table(sin, x);
    // In x's layout: q and k are transposed views of the projections' (B, S, H, D) outputs, the layout ATen's
    // flash attention reads without a copy.
    at::Tensor y = at::empty_like(x, x.options().dtype(out_dtype));
    rope_apply(x, c, s, y, /*inverse=*/false);
    ctx->save_for_backward({c, s});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    // dx in x's layout when it has one (q and k are transposed views of the projections' outputs).
    if (x.is_non_overlapping_and_dense()) ctx->saved_data["x_strides"] = x.strides().vec();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    at::Tensor gy = grad_out[0];
    if (gy.stride(3) != 1) gy = gy.contiguous();
    const auto opts = gy.options().dtype(x_dtype);
    at::Tensor dx = ctx->saved_data.count("x_strides")
                        ? at::empty_strided(gy.sizes(), ctx->saved_data["x_strides"].toIntVector(), opts)
                        : at::empty(gy.sizes(), opts);
    rope_apply(gy, saved[0], saved[1], dx, /*inverse=*/true);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ------------------------------------------------------------ residual add

// out = h + b with b's bf16 values widened exactly: ATen's add of the pair, without its fp32 copy of b.
FORGE_CLONES void add_widened(const float* h, const c10::BFloat16* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = h[i] + load(b[i]);
}

bool residual_add_fusable(const at::Tensor& h, const at::Tensor& b) {
  return h.device().is_cpu() && b.device().is_cpu() && h.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kBFloat16 && h.sizes().equals(b.sizes()) && h.is_contiguous() && b.is_contiguous();
}

at::Tensor residual_add_forward(const at::Tensor& h, const at::Tensor& b) {
  RECORD_FUNCTION("forge::residual_add", {});  // named in `forge bench --profile`
  at::Tensor out = at::empty_like(h, at::MemoryFormat::Contiguous);
  const float* hp = h.const_data_ptr<float>();
  const auto* bp = b.const_data_ptr<c10::BFloat16>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, h.numel(), int64_t{1} << 15,
                   [&](int64_t i0, int64_t i1) { add_widened(hp + i0, bp + i0, op + i0, i1 - i0); });
  return out;
}

// The gradients of ATen's add: the output's for h, and the same cast to bf16 for b (as autograd casts a
// gradient to its input's dtype).
struct ResidualAdd : torch::autograd::Function<ResidualAdd> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& h, const at::Tensor& b) {
    return residual_add_forward(h, b);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor& g = grad_out[0];
    return {ctx->needs_input_grad(0) ? g : at::Tensor(), ctx->needs_input_grad(1) ? g.to(at::kBFloat16) : at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (!fusable(x) || !autograd_wanted({x, weight}) || weight.dim() != 1 || weight.size(0) != x.size(-1))
    return rms_norm_forward(x, weight, eps, nullptr);
  return RmsNorm::apply(x, weight, eps);
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  if (!fusable(gate) || gate.scalar_type() != up.scalar_type() || !gate.sizes().equals(up.sizes()) ||
      !autograd_wanted({gate, up}))
    return silu_mul_forward(gate, up);
  return SiluMul::apply(gate, up);
}

at::Tensor silu_mul_packed(const at::Tensor& gate_up) {
  if (gate_up.dim() == 0 || gate_up.size(-1) % 2 != 0)
    throw InvalidArgument(fmt::format("silu_mul_packed: the last dim of {} is not gate and up halves",
                                      util::shape(gate_up)));
  if (!fusable(gate_up) || !autograd_wanted({gate_up})) return silu_mul_packed_forward(gate_up);
  return SiluMulPacked::apply(gate_up);
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType out = out_dtype.value_or(at::result_type(x, cos));
  if (rope_fusable(x, cos, sin) && (out == at::kFloat || out == at::kBFloat16)) return Rope::apply(x, cos, sin, out);
  return rope_forward(x, cos, sin).to(out);
}

at::Tensor residual_add(const at::Tensor& h, const at::Tensor& branch) {
  if (!residual_add_fusable(h, branch)) return h + branch;
  if (!autograd_wanted({h, branch})) return residual_add_forward(h, branch);
  return ResidualAdd::apply(h, branch);
}

}  // namespace forge::fused
