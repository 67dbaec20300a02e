// forge check-model: build the model a config describes, show its parameter
// counts and residual layout, and run one forward/backward on random data.
#include <chrono>
#include <iostream>

#include <fmt/format.h>

#include "apps/forge/commands.h"
#include "core/config/loader.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "core/training/loss.h"
#include "core/util/strings.h"

namespace forge::app {

namespace {

// "transformer.layers.3.attention.q_proj.weight" -> "transformer.layers"
std::string group_of(const std::string& name) {
  auto parts = util::split(name, '.');
  if (parts.size() >= 2 && parts[0] == "transformer") return parts[0] + "." + parts[1];
  return parts[0];
}

}  // namespace

int cmd_check_model(const ConfigArgs& args, int64_t batch) {
  Registry& reg = Registry::global();
  LoadedConfig cfg = load_job(args);
  const JobConfig& job = cfg.job;
  if (!job.is_vlm()) throw UsageError(args.config + ": check-model needs a [vlm] config");
  VLM model = build_vlm(job, reg);
  check_freeze_specs(*model, *job.vlm);
  auto patterns = job.vlm->resolved_module_patterns();
  apply_freeze(*model, effective_freeze(0, job.vlm->freeze, job.vlm->freeze_schedule), patterns);
  auto ever = ever_trainable(*model, *job.vlm);

  const ModelConfig& m = job.model;
  std::cout << fmt::format("{}: arch {}, encoder {} ({} tokens x {}), adapter {} ({} -> {} tokens), decoder {} "
                           "layers x dim {} ({} heads, {} kv heads, ffn {}), vocab {}\n",
                           args.config, job.vlm->arch, job.vision_encoder->type, model->vision_encoder->num_tokens(),
                           model->vision_encoder->feature_dim(), job.adapter->type,
                           model->vision_encoder->num_tokens(), model->visual_tokens(), m.n_layers, m.dim, m.n_heads,
                           m.kv_heads(), m.ffn_hidden(), m.vocab_size);
  const int64_t N = model->residual_image_tokens(), T = job.vlm->max_text_len;
  if (N > 0) {
    std::cout << fmt::format("residual stream: [{} image | {} text] = {} of {} positions; logits at positions {}..{} "
                             "predict text tokens 0..{} (D1)\n",
                             N, T, N + T, m.max_seq_len, N - 1, N + T - 2, T - 1);
  } else {
    std::cout << fmt::format("residual stream: [{} text] of {} positions; {} image tokens enter through "
                             "cross-attention; logit t predicts token t+1 (D1)\n",
                             T, m.max_seq_len, model->visual_tokens());
  }
  std::map<std::string, std::array<double, 3>> groups;  // total, trainable now, trainable at some step
  std::vector<std::string> order;
  double total = 0, now = 0, some = 0;
  for (const auto& [name, p] : nn::unique_named_parameters(*model)) {
    std::string g = group_of(name);
    if (!groups.count(g)) order.push_back(g);
    auto& c = groups[g];
    const double n = static_cast<double>(p.numel());
    c[0] += n;
    if (p.requires_grad()) c[1] += n;
    if (ever.count(name)) c[2] += n;
    total += n;
    now += p.requires_grad() ? n : 0;
    some += ever.count(name) ? n : 0;
  }
  std::cout << fmt::format("\n{:<36} {:>12} {:>14} {:>16}\n", "parameters", "total", "trainable now",
                           "trained at all");
  if (!groups.count("vision_encoder")) std::cout << fmt::format("{:<36} {:>12} {:>14} {:>16}\n", "vision_encoder", 0, 0, 0);
  for (const auto& g : order) {
    const auto& c = groups[g];
    std::cout << fmt::format("{:<36} {:>12} {:>14} {:>16}\n", g, static_cast<int64_t>(c[0]), static_cast<int64_t>(c[1]),
                             static_cast<int64_t>(c[2]));
  }
  std::cout << fmt::format("{:<36} {:>12} {:>14} {:>16}   ({} total)\n", "total", static_cast<int64_t>(total),
                           static_cast<int64_t>(now), static_cast<int64_t>(some), util::human_count(total));

  // One forward/backward on random data.
  const int64_t size = job.data.hf_image_size;
  torch::manual_seed(static_cast<uint64_t>(job.train.seed));
  at::Tensor pixels = torch::rand({batch, 3, size, size}) * 2 - 1;
  at::Tensor ids = torch::randint(0, m.vocab_size, {batch, T}, torch::kLong);
  auto t0 = std::chrono::steady_clock::now();
  VLMOutput out = model->forward(pixels, ids, ids);
  LossValue loss = cross_entropy(out.logits, out.targets, job.train.z_loss_weight);
  loss.loss.backward();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double gsq = 0;
  int64_t with_grad = 0;
  for (const auto& p : model->parameters()) {
    if (p.grad().defined()) {
      gsq += p.grad().pow(2).sum().item<double>();
      ++with_grad;
    }
  }
  std::cout << fmt::format("\nforward + backward on random data (batch {}, {}x{} images, {} text tokens): loss {:.4f} "
                           "(ln V = {:.4f}), grad norm {:.4g} over {} tensors, {:.2f}s\n",
                           batch, size, size, T, loss.loss.item<double>(), std::log(static_cast<double>(m.vocab_size)),
                           std::sqrt(gsq), with_grad, secs);
  std::cout << fmt::format("model FLOPs per sample (forward): {}\n",
                           util::human_count(model->forward_flops_per_sample(T)));
  return kExitOk;
}

}  // namespace forge::app
