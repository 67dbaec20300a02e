// MoE routers (forge/moe.h; spec section 2.12).
#include <cmath>

#include <fmt/format.h>

#include "forge/config.h"
#include "forge/error.h"
#include "forge/moe.h"

namespace forge::nn {

namespace {

torch::nn::Linear bias_free(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// (token, slot) assignments per expert, as fp32.
at::Tensor assignment_counts(const at::Tensor& indices, int64_t num_experts) {
  return at::bincount(indices.reshape(-1), {}, num_experts).to(at::kFloat);
}

at::Tensor z_loss_of(const at::Tensor& logits) { return at::logsumexp(logits, -1).pow(2).mean(); }

}  // namespace

// ------------------------------------------------------------ the rules over [model]

bool is_moe_layer(const ModelConfig& cfg, int64_t layer_index) {
  return cfg.num_experts > 0 && cfg.moe_frequency > 0 && (layer_index + 1) % cfg.moe_frequency == 0;
}

int64_t expert_hidden_size(int64_t ffn_hidden, double multiplier) {
  const double raw = std::trunc(static_cast<double>(ffn_hidden) * multiplier);
  // Python's round(): half to even.
  const double rounded = std::nearbyint(raw / 16.0);
  return std::max<int64_t>(16, 16 * static_cast<int64_t>(rounded));
}

MoEOptions moe_options(const ModelConfig& cfg) {
  MoEOptions o;
  o.dim = cfg.dim;
  o.hidden = expert_hidden_size(cfg.ffn_hidden(), cfg.moe_expert_ffn_multiplier);
  o.num_experts = cfg.num_experts;
  o.top_k = cfg.moe_top_k;
  o.router = cfg.moe_router;
  o.activation = cfg.activation;
  o.shared_expert = cfg.moe_shared_experts > 0;
  o.capacity_factor = cfg.moe_capacity_factor;
  o.gradient_scale = cfg.moe_gradient_scale;
  o.packed = cfg.moe_packed_experts;
  o.aux_loss_weight = cfg.moe_aux_loss_weight;
  o.z_loss_weight = cfg.moe_router_z_loss_weight;
  o.sequence_aux_loss_weight = cfg.moe_sequence_aux_loss_weight;
  o.bias_schedule = cfg.moe_bias_schedule;
  return o;
}

// ------------------------------------------------------------ Router

RouterImpl::RouterImpl(int64_t dim, int64_t experts, int64_t k) : num_experts(experts), top_k(k) {
  if (experts <= 0 || k <= 0 || k > experts)
    throw InvalidArgument(fmt::format("router: top_k = {} must be in [1, num_experts = {}]", k, experts));
  gate = register_module("gate", bias_free(dim, experts));
}
RouterImpl::~RouterImpl() = default;
void RouterImpl::set_step(int64_t, int64_t) {}
void RouterImpl::balance(const at::Tensor&) {}
bool RouterImpl::balances() const { return false; }

SoftmaxTopKRouterImpl::SoftmaxTopKRouterImpl(int64_t dim, int64_t experts, int64_t k) : RouterImpl(dim, experts, k) {}

RouterOutput SoftmaxTopKRouterImpl::route(const at::Tensor& x) {
  at::Tensor logits = gate(x).to(at::kFloat);
  at::Tensor probs = at::softmax(logits, -1);
  auto [w, idx] = at::topk(probs, top_k, -1);
  RouterOutput out;
  out.weights = w / w.sum(-1, true);
  out.indices = idx;
  out.counts = assignment_counts(idx, num_experts);
  const double n = static_cast<double>(x.size(0));
  at::Tensor f = out.counts / (n * static_cast<double>(top_k));
  out.aux_loss = static_cast<double>(num_experts) * (f * probs.mean(0)).sum();
  out.z_loss = z_loss_of(logits);
  return out;
}

SigmoidTopKRouterImpl::SigmoidTopKRouterImpl(int64_t dim, int64_t experts, int64_t k, double seq_weight,
                                             std::string schedule)
    : RouterImpl(dim, experts, k), sequence_aux_loss_weight(seq_weight), bias_schedule(std::move(schedule)) {
  if (bias_schedule != "constant" && bias_schedule != "cosine_decay" && bias_schedule != "linear_warmup")
    throw InvalidArgument(fmt::format("router: unknown bias schedule \"{}\" (constant, cosine_decay, linear_warmup)",
                                      bias_schedule));
  expert_bias = register_parameter("expert_bias", at::zeros({experts}));
  expert_ema = register_buffer("expert_ema", at::ones({experts}) / static_cast<double>(experts));
}

void SigmoidTopKRouterImpl::set_step(int64_t step, int64_t max_steps) {
  step_ = step;
  max_steps_ = std::max<int64_t>(max_steps, 1);
}

double SigmoidTopKRouterImpl::bias_rate() const {
  const double progress = static_cast<double>(step_) / static_cast<double>(max_steps_);
  if (bias_schedule == "cosine_decay") return bias_update_rate * 0.5 * (1.0 + std::cos(M_PI * progress));
  if (bias_schedule == "linear_warmup") return bias_update_rate * std::min(1.0, progress * 10.0);
  return bias_update_rate;
}

RouterOutput SigmoidTopKRouterImpl::route(const at::Tensor& x) {
  at::Tensor logits = gate(x).to(at::kFloat);
  at::Tensor scores = at::sigmoid(logits + expert_bias.to(at::kFloat));
  auto [w, idx] = at::topk(scores, top_k, -1);
  RouterOutput out;
  out.weights = w / w.sum(-1, true);
  out.indices = idx;
  out.counts = assignment_counts(idx, num_experts);
  if (sequence_aux_loss_weight > 0) {
    const double n = static_cast<double>(x.size(0));
    at::Tensor f = out.counts / (n * static_cast<double>(top_k) + 1e-8);
    out.aux_loss = sequence_aux_loss_weight * static_cast<double>(num_experts) * (f * scores.mean(0)).sum();
  } else {
    out.aux_loss = at::zeros({}, logits.options());
  }
  out.z_loss = z_loss_of(logits);
  return out;
}

void SigmoidTopKRouterImpl::balance(const at::Tensor& utilisation) {
  torch::NoGradGuard no_grad;
  const double rate = bias_rate();
  const double target = 1.0 / static_cast<double>(num_experts);
  at::Tensor u = utilisation.to(expert_ema.device(), at::kFloat);
  for (int64_t m = 0; m < u.size(0); ++m) {
    expert_ema.lerp_(u[m].to(expert_ema.scalar_type()), 1.0 - ema_decay);
    expert_bias.add_(rate * (target - expert_ema.to(at::kFloat)));
  }
}

std::shared_ptr<RouterImpl> make_router(const MoEOptions& o) {
  if (o.router == "softmax_topk") return std::make_shared<SoftmaxTopKRouterImpl>(o.dim, o.num_experts, o.top_k);
  if (o.router == "sigmoid_topk")
    return std::make_shared<SigmoidTopKRouterImpl>(o.dim, o.num_experts, o.top_k, o.sequence_aux_loss_weight,
                                                   o.bias_schedule);
  throw InvalidArgument(fmt::format("unknown MoE router \"{}\" (softmax_topk, sigmoid_topk)", o.router));
}

}  // namespace forge::nn
