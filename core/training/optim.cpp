#include "core/training/optim.h"

#include <cmath>

#include <fmt/format.h>

#include "core/training/fused_adamw.h"
#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

int64_t ParamGroups::numel() const {
  int64_t n = 0;
  for (const auto& [k, p] : decay) n += p.numel();
  for (const auto& [k, p] : no_decay) n += p.numel();
  return n;
}

std::vector<at::Tensor> ParamGroups::all() const {
  std::vector<at::Tensor> out;
  for (const auto& [k, p] : decay) out.push_back(p);
  for (const auto& [k, p] : no_decay) out.push_back(p);
  return out;
}

ParamGroups make_param_groups(const torch::nn::Module& model, const std::set<std::string>& trainable,
                              bool decay_embeddings) {
  ParamGroups g;
  std::set<const void*> seen;  // a tied tensor is optimised once
  for (const auto& item : model.named_parameters(true)) {
    const std::string& name = item.key();
    if (!trainable.count(name) || !seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    const bool embedding = name.find("embedding") != std::string::npos;
    const bool decays = item.value().dim() >= 2 && name.find("bias") == std::string::npos &&
                        (decay_embeddings || !embedding);
    (decays ? g.decay : g.no_decay).emplace_back(name, item.value());
  }
  return g;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(const ParamGroups& groups, const OptimizerConfig& cfg) {
  auto opts = torch::optim::AdamWOptions(cfg.lr)
                  .betas(std::make_tuple(cfg.betas.at(0), cfg.betas.at(1)))
                  .eps(cfg.eps)
                  .weight_decay(cfg.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> pg;
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& [k, p] : groups.decay) decay.push_back(p);
  for (const auto& [k, p] : groups.no_decay) no_decay.push_back(p);
  pg.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts));
  auto nd = std::make_unique<torch::optim::AdamWOptions>(opts);
  nd->weight_decay(0.0);
  pg.emplace_back(no_decay, std::move(nd));
  if (cfg.fused) return std::make_unique<FusedAdamW>(std::move(pg), opts);
  return std::make_unique<torch::optim::AdamW>(std::move(pg), opts);
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

void scale_gradients(const std::vector<at::Tensor>& params, double scale) {
  if (scale == 1.0) return;  // x * 1 == x, NaN included: a pass that would change no bit
  at::NoGradGuard no_grad;
  // An fp32 0-dim tensor, as LibTorch's clip multiplies by: a bf16 gradient's product then rounds as its does.
  const at::Tensor factor = at::scalar_tensor(scale, at::kFloat);
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(factor);
}

void optimizer_step(torch::optim::AdamW& opt, double grad_scale) {
  if (auto* fused = dynamic_cast<FusedAdamW*>(&opt)) return fused->step_scaled(grad_scale);
  for (auto& group : opt.param_groups()) scale_gradients(group.params(), grad_scale);
  opt.step();
}

double lr_factor(const SchedulerConfig& s, int64_t step, int64_t max_steps) {
  const double W = static_cast<double>(s.warmup_steps), m = s.min_lr_ratio, t = static_cast<double>(step);
  if (s.name == "none") return 1.0;
  if (t < W) return W == 0 ? 1.0 : std::min(1.0, t / W);
  auto progress = [](double x, double T) { return T <= 0 ? 1.0 : std::min(1.0, x / T); };
  auto cosine = [&](double x, double T) {
    return T <= 0 ? 1.0 : m + 0.5 * (1 - m) * (1 + std::cos(M_PI * progress(x, T)));
  };
  auto linear = [&](double x, double T) { return T <= 0 ? 1.0 : 1 - (1 - m) * progress(x, T); };
  auto sqrt_decay = [&](double x, double T) { return T <= 0 ? 1.0 : m + (1 - m) * std::sqrt(1 - progress(x, T)); };
  const double rest = static_cast<double>(max_steps) - W;
  if (s.name == "cosine") return cosine(t - W, s.decay_steps ? static_cast<double>(*s.decay_steps) : rest);
  if (s.name == "linear") return linear(t - W, s.decay_steps ? static_cast<double>(*s.decay_steps) : rest);
  if (s.name == "constant") return 1.0;
  if (s.name == "rex") {
    const double D = s.decay_steps ? static_cast<double>(*s.decay_steps) : rest;
    const double p = std::min(1.0, (t - W) / std::max(D, 1.0));
    return std::max(m, std::pow(1 - p, s.rex_alpha));
  }
  if (s.name == "wsd") {
    const double S = static_cast<double>(s.stable_steps.value_or(0));
    if (t < W + S) return 1.0;
    const double D = s.decay_steps ? static_cast<double>(*s.decay_steps) : rest - S;
    if (s.wsd_decay_type == "linear") return linear(t - W - S, D);
    if (s.wsd_decay_type == "sqrt") return sqrt_decay(t - W - S, D);
    return cosine(t - W - S, D);
  }
  throw InvalidArgument(fmt::format("unknown scheduler \"{}\"", s.name));
}

std::vector<std::pair<std::string, at::Tensor>> optimizer_state(torch::optim::AdamW& opt, const ParamGroups& groups) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto& state = opt.state();
  auto add = [&](const std::vector<std::pair<std::string, at::Tensor>>& params) {
    for (const auto& [name, p] : params) {
      auto it = state.find(p.unsafeGetTensorImpl());
      if (it == state.end()) continue;
      auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      out.emplace_back(name + ".exp_avg", s.exp_avg());
      out.emplace_back(name + ".exp_avg_sq", s.exp_avg_sq());
      out.emplace_back(name + ".step", at::scalar_tensor(s.step(), at::kLong));
    }
  };
  add(groups.decay);
  add(groups.no_decay);
  return out;
}

int64_t load_optimizer_state(torch::optim::AdamW& opt, const ParamGroups& groups, const safetensors::File& file,
                             const ShardView* shards) {
  auto& state = opt.state();
  int64_t n = 0;
  auto restore = [&](const std::vector<std::pair<std::string, at::Tensor>>& params) {
    for (const auto& [name, p] : params) {
      if (!file.contains(name + ".exp_avg")) continue;  // never had a gradient when saved
      for (const char* part : {".exp_avg_sq", ".step"})
        if (!file.contains(name + part))
          throw FormatError(fmt::format("{}: has '{}.exp_avg' but not '{}{}'", file.path(), name, name, part));
      at::Tensor m = file.load(name + ".exp_avg", p.scalar_type());
      at::Tensor v = file.load(name + ".exp_avg_sq", p.scalar_type());
      const bool sharded = shards && shards->is_sharded(name);
      const std::vector<int64_t> whole = sharded ? shards->full_shape(name) : p.sizes().vec();
      if (m.sizes() != at::IntArrayRef(whole) || v.sizes() != at::IntArrayRef(whole))
        throw FormatError(fmt::format("{}: optimizer state '{}.exp_avg' has shape {} but the parameter has {}",
                                      file.path(), name, util::shape(m), util::shape(at::IntArrayRef(whole))));
      if (sharded) {
        m = shards->local(name, m);
        v = shards->local(name, v);
      }
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(file.load(name + ".step").item<int64_t>());
      s->exp_avg(m.to(p.device()));
      s->exp_avg_sq(v.to(p.device()));
      state[p.unsafeGetTensorImpl()] = std::move(s);
      ++n;
    }
  };
  restore(groups.decay);
  restore(groups.no_decay);
  return n;
}

}  // namespace forge
