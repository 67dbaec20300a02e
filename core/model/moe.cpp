// The MoE feed-forward layer (forge/moe.h; spec section 2.12).
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <cmath>

#include <fmt/format.h>

#include "core/model/fused_cpu.h"
#include "core/util/tensor.h"
#include "forge/error.h"
#include "forge/moe.h"

namespace forge::nn {

namespace {

// The dtype expert matmuls run in: the autocast dtype when autocast is on for x's device.
at::ScalarType compute_dtype(const at::Tensor& x) {
  const auto type = x.device().type();
  if (at::autocast::is_autocast_enabled(type)) return at::autocast::get_autocast_dtype(type);
  return x.scalar_type();
}

// (M, K) @ (E, K, N) -> (M, N), rows grouped by expert: counts[e] consecutive rows go to weight[e].
at::Tensor grouped_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& counts) {
  // CUDA's grouped kernel takes bf16 only; fp32 on a GPU goes expert by expert.
  if (x.is_cpu() || x.scalar_type() == at::kBFloat16) {
    at::Tensor offs = at::cumsum(counts, 0, at::kInt);
    at::Tensor out = at::_grouped_mm(x, weight, offs);
    // The kernel's backward takes no expanded (stride-0) gradients.
    if (out.requires_grad()) out.register_hook([](const at::Tensor& g) { return g.contiguous(); });
    return out;
  }
  at::Tensor host = counts.to(at::kCPU);
  std::vector<at::Tensor> parts;
  int64_t start = 0;
  for (int64_t e = 0; e < host.size(0); ++e) {
    const int64_t n = host[e].item<int64_t>();
    if (n > 0) parts.push_back(at::matmul(x.narrow(0, start, n), weight[e]));
    start += n;
  }
  return at::cat(parts);
}

}  // namespace

at::Tensor apply_capacity(const at::Tensor& weights, const at::Tensor& indices, int64_t num_experts,
                          double capacity_factor) {
  const int64_t n = indices.size(0), k = indices.size(1);
  // Left to right, as the reference: tokens * top_k / experts * factor.
  const double raw = static_cast<double>(n * k) / static_cast<double>(num_experts) * capacity_factor;
  const int64_t capacity = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(raw)));
  std::vector<at::Tensor> kept;
  for (int64_t slot = 0; slot < k; ++slot) {
    at::Tensor idx = indices.select(1, slot);
    at::Tensor one_hot = at::one_hot(idx, num_experts);                      // (N, E)
    at::Tensor position = one_hot.cumsum(0).gather(1, idx.unsqueeze(1)).squeeze(1);  // 1-based, per expert
    kept.push_back(position <= capacity);
  }
  at::Tensor keep = at::stack(kept, 1);
  return at::where(keep, weights, at::zeros({}, weights.options()));
}

MoEImpl::MoEImpl(const MoEOptions& o) : options(o) {
  if (o.dim <= 0 || o.hidden <= 0 || o.num_experts <= 0)
    throw InvalidArgument(fmt::format("MoE layer: dim {}, hidden {} and num_experts {} must be positive", o.dim,
                                      o.hidden, o.num_experts));
  // Built in the reference's order (router, experts, shared expert) so that default inits draw alike;
  // registered in its order (router, shared expert, experts).
  router = make_router(o);
  std::vector<Mlp> built;
  for (int64_t e = 0; e < o.num_experts; ++e) built.push_back(Mlp(o.dim, o.hidden, o.activation));
  Mlp shared{nullptr};
  if (o.shared_expert) shared = Mlp(o.dim, o.hidden, o.activation);
  register_module("router", router);
  if (shared) shared_expert = register_module("shared_expert", shared);
  if (o.packed) {
    torch::NoGradGuard no_grad;
    auto stack = [&](auto member) {
      std::vector<at::Tensor> ws;
      for (auto& m : built) ws.push_back((m.get()->*member)->weight.t().contiguous());
      return at::stack(ws);
    };
    up_w = register_parameter("up_w", stack(&MlpImpl::up_proj));
    down_w = register_parameter("down_w", stack(&MlpImpl::down_proj));
    if (o.activation == "silu") gate_w = register_parameter("gate_w", stack(&MlpImpl::gate_proj));
  } else {
    experts = register_module("experts", torch::nn::ModuleList());
    for (auto& m : built) experts->push_back(m);
  }
}
MoEImpl::~MoEImpl() = default;

std::vector<at::Tensor> MoEImpl::stacked_weights() const {
  if (options.packed) return {up_w, down_w, gate_w};
  // Stacked as stored, (E, out, in), and used transposed: a plain copy, and in backward each expert's
  // gradient is a contiguous slice its parameter takes as it is (a transposed stack made AccumulateGrad copy).
  std::vector<at::Tensor> up, down, gate;
  for (const auto& m : *experts) {
    auto* mlp = m->as<MlpImpl>();
    up.push_back(mlp->up_proj->weight);
    down.push_back(mlp->down_proj->weight);
    if (mlp->gate_proj) gate.push_back(mlp->gate_proj->weight);
  }
  auto in_out = [](const std::vector<at::Tensor>& w) { return at::stack(w).transpose(1, 2); };
  return {in_out(up), in_out(down), gate.empty() ? at::Tensor() : in_out(gate)};
}

at::Tensor MoEImpl::expert_forward(const at::Tensor& x_sorted, const at::Tensor& counts) const {
  if (x_sorted.size(0) == 0) return at::zeros_like(x_sorted);
  const at::ScalarType dt = x_sorted.scalar_type();
  auto w = stacked_weights();
  at::Tensor up = w[0].to(dt), down = w[1].to(dt);
  at::Tensor hidden;
  if (w[2].defined()) {
    hidden = fused::silu_mul(grouped_mm(x_sorted, w[2].to(dt), counts), grouped_mm(x_sorted, up, counts));
  } else if (options.activation == "gelu") {
    hidden = at::gelu(grouped_mm(x_sorted, up, counts));
  } else {
    hidden = at::relu(grouped_mm(x_sorted, up, counts));
  }
  return grouped_mm(hidden, down, counts);
}

at::Tensor MoEImpl::forward(const at::Tensor& x) {
  if (x.dim() != 3)
    throw InvalidArgument(fmt::format("MoE layer: input must be (B, S, D), got {}", util::shape(x)));
  const int64_t n = x.size(0) * x.size(1), d = x.size(2), k = options.top_k, e = options.num_experts;
  at::Tensor x_flat = x.reshape({n, d});
  RouterOutput r = router->route(x_flat);
  at::Tensor weights = r.weights;
  if (options.capacity_factor > 0) weights = apply_capacity(weights, r.indices, e, options.capacity_factor);

  // Sort the (token, slot) pairs by expert: each expert's rows become one contiguous group.
  at::Tensor flat_idx = r.indices.reshape(-1);
  at::Tensor order = at::argsort(flat_idx, /*stable=*/true, 0, false);
  at::Tensor token_ids = at::arange(n, flat_idx.options()).unsqueeze(1).expand({n, k}).reshape(-1);
  at::Tensor sorted_tokens = token_ids.index_select(0, order);
  at::Tensor sorted_weights = weights.reshape(-1).index_select(0, order);
  at::Tensor counts = at::bincount(flat_idx, {}, e);
  at::Tensor x_sorted = x_flat.to(compute_dtype(x)).index_select(0, sorted_tokens);
  at::Tensor out = expert_forward(x_sorted, counts);
  if (options.gradient_scale && is_training()) {
    const double avg = static_cast<double>(out.size(0)) / static_cast<double>(e);
    at::Tensor scale = (avg / counts.clamp_min(1).to(at::kDouble)).to(at::kFloat);
    at::Tensor rows = at::repeat_interleave(scale, counts, 0, out.size(0));
    out = (out.to(at::kFloat) * rows.unsqueeze(-1)).to(out.scalar_type());
  }
  out = out * sorted_weights.unsqueeze(-1).to(out.scalar_type());
  at::Tensor y = at::zeros({n, d}, out.options()).index_add(0, sorted_tokens, out);
  if (shared_expert) y = y + shared_expert(x_flat);
  y = y.reshape({x.size(0), x.size(1), d});

  last_ = RouterOutput{weights.detach(), r.indices, r.counts, r.aux_loss.detach(), r.z_loss.detach()};
  if (is_training()) {
    // One record per micro-batch: a recomputation in backward (activation checkpointing) adds none.
    if (!recorded_ && router->balances()) {
      const double denom = static_cast<double>(n * k) + 1e-8;
      pending_.push_back(at::cat({r.counts.detach() / denom, at::ones({1}, r.counts.options())}));
      recorded_ = true;
    }
    at::Tensor aux;
    if (options.aux_loss_weight > 0) aux = options.aux_loss_weight * r.aux_loss;
    if (options.z_loss_weight > 0) {
      at::Tensor z = options.z_loss_weight * r.z_loss;
      aux = aux.defined() ? aux + z : z;
    }
    if (aux.defined()) y = attach_aux_loss(y, aux, loss_scale_);
  }
  return y;
}

void MoEImpl::begin_micro_batch(const MicroBatch& mb) {
  router->set_step(mb.step, mb.max_steps);
  loss_scale_ = mb.loss_scale;
  recorded_ = false;
}

std::vector<at::Tensor> MoEImpl::step_statistics() {
  if (pending_.empty()) return {};
  pending_ = {at::stack(pending_)};
  return {pending_[0]};
}

void MoEImpl::end_step(bool updated) {
  if (updated && !pending_.empty()) {
    at::Tensor stats = pending_.size() == 1 && pending_[0].dim() == 2 ? pending_[0] : at::stack(pending_);
    router->balance(stats.narrow(1, 0, options.num_experts) / stats.narrow(1, options.num_experts, 1));
  }
  pending_.clear();
  recorded_ = false;
}

void MoEImpl::report(const std::string& name, StepReport& out) const {
  if (!last_.counts.defined()) return;
  out.sums["moe/aux_loss"] += last_.aux_loss.item<double>();
  out.sums["moe/router_z_loss"] += last_.z_loss.item<double>();
  at::Tensor c = last_.counts.to(at::kCPU, at::kDouble).contiguous();
  out.series["moe/expert_counts/" + name] = std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace forge::nn
