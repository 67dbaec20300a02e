// Mixture-of-experts feed-forward layers (KempnerForge's MoEMLP, spec
// section 2.12): a router picks top-k experts per token, tokens are sorted by
// expert and run through grouped matmuls, and the weighted expert outputs are
// added back per token (plus an optional shared expert that sees every
// token). State-dict names follow the reference:
//   router.gate.weight, router.expert_bias + buffer router.expert_ema (sigmoid
//   router), experts.<e>.{gate,up,down}_proj.weight (or packed up_w, down_w,
//   gate_w shaped (E, in, out)), shared_expert.*.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "forge/export.h"
#include "forge/nn.h"
#include "forge/step_participant.h"

namespace forge {
struct ModelConfig;
}

namespace forge::nn {

struct FORGE_API MoEOptions {
  int64_t dim = 0;
  int64_t hidden = 0;  // each expert's (and the shared expert's) hidden size
  int64_t num_experts = 0;
  int64_t top_k = 2;
  std::string router = "softmax_topk";  // or "sigmoid_topk"
  std::string activation = "silu";
  bool shared_expert = false;
  double capacity_factor = 0.0;          // > 0: each expert keeps ceil(N*k/E*cf) tokens per top-k slot
  bool gradient_scale = false;           // training: scale each expert's rows by (N*k/E) / its token count
  bool packed = false;                   // experts as (E, in, out) tensors up_w, down_w, gate_w
  double aux_loss_weight = 0.01;         // added to the objective: weight * router aux loss
  double z_loss_weight = 0.0;            // and weight * router z-loss (when > 0)
  double sequence_aux_loss_weight = 0.0; // sigmoid router: its balance loss (0: none)
  std::string bias_schedule = "constant";  // sigmoid router: constant, cosine_decay, linear_warmup
};

// The reference's rules over [model].
FORGE_API bool is_moe_layer(const ModelConfig& cfg, int64_t layer_index);
FORGE_API int64_t expert_hidden_size(int64_t ffn_hidden, double multiplier);
FORGE_API MoEOptions moe_options(const ModelConfig& cfg);

struct FORGE_API RouterOutput {
  at::Tensor weights;  // (N, k) fp32, each row sums to 1
  at::Tensor indices;  // (N, k) int64, descending score
  at::Tensor counts;   // (E,) fp32: (token, slot) assignments per expert
  at::Tensor aux_loss; // scalar: the router's load-balancing loss (0 when it has none)
  at::Tensor z_loss;   // scalar: mean over tokens of logsumexp(logits)^2
};

// A router: `gate` (bias-free D -> E) plus its rule.
class FORGE_API RouterImpl : public torch::nn::Module {
 public:
  RouterImpl(int64_t dim, int64_t num_experts, int64_t top_k);
  ~RouterImpl() override;
  virtual RouterOutput route(const at::Tensor& x) = 0;  // x: (N, D)
  // Training progress, for schedules.
  virtual void set_step(int64_t step, int64_t max_steps);
  // Balancing state moved once per step from the counts of its micro-batches
  // (rows: one per micro-batch, E counts normalised to fractions; already
  // averaged over ranks). Default: nothing.
  virtual void balance(const at::Tensor& utilisation);
  // Whether the router keeps balancing state that balance() moves.
  virtual bool balances() const;

  torch::nn::Linear gate{nullptr};
  int64_t num_experts;
  int64_t top_k;
};

// Mixtral-style: softmax over experts, top-k, renormalised. aux = E *
// sum_e f_e * P_e (f: fraction of assignments, P: mean probability).
class FORGE_API SoftmaxTopKRouterImpl : public RouterImpl {
 public:
  SoftmaxTopKRouterImpl(int64_t dim, int64_t num_experts, int64_t top_k);
  RouterOutput route(const at::Tensor& x) override;
};

// DeepSeek-V3-style: sigmoid(logits + expert_bias), top-k, renormalised.
// expert_bias is moved without gradient toward uniform use from an EMA of
// the utilisation (`expert_ema`, decay 0.99, rate 0.001 times the schedule).
// aux = sequence_aux_loss_weight * E * sum_e f_e * mean score_e (0 when the
// weight is 0).
class FORGE_API SigmoidTopKRouterImpl : public RouterImpl {
 public:
  SigmoidTopKRouterImpl(int64_t dim, int64_t num_experts, int64_t top_k, double sequence_aux_loss_weight,
                        std::string bias_schedule);
  RouterOutput route(const at::Tensor& x) override;
  void set_step(int64_t step, int64_t max_steps) override;
  void balance(const at::Tensor& utilisation) override;
  bool balances() const override { return true; }
  double bias_rate() const;  // the scheduled update rate at the current step

  at::Tensor expert_bias;  // parameter (E,)
  at::Tensor expert_ema;   // buffer (E,)
  double sequence_aux_loss_weight;
  std::string bias_schedule;
  double bias_update_rate = 0.001;
  double ema_decay = 0.99;

 private:
  int64_t step_ = 0, max_steps_ = 1;
};

FORGE_API std::shared_ptr<RouterImpl> make_router(const MoEOptions& options);

// The MoE feed-forward layer. forward(x: (B, S, D)) -> (B, S, D).
class FORGE_API MoEImpl : public torch::nn::Module, public StepParticipant {
 public:
  explicit MoEImpl(const MoEOptions& options);
  ~MoEImpl() override;
  at::Tensor forward(const at::Tensor& x);

  // StepParticipant
  void begin_micro_batch(const MicroBatch& mb) override;
  std::vector<at::Tensor> step_statistics() override;
  void end_step(bool updated) override;
  void report(const std::string& name, StepReport& out) const override;

  // Experts' weights stacked as (E, in, out): up, down, gate (undefined
  // without SwiGLU). The packed parameters themselves when packed.
  std::vector<at::Tensor> stacked_weights() const;
  // The last forward's routing (detached), for tests and metrics.
  const RouterOutput& last_routing() const { return last_; }

  MoEOptions options;
  std::shared_ptr<RouterImpl> router;
  torch::nn::ModuleList experts{nullptr};  // unpacked
  Mlp shared_expert{nullptr};
  at::Tensor up_w, down_w, gate_w;  // packed

 private:
  at::Tensor expert_forward(const at::Tensor& x_sorted, const at::Tensor& counts) const;
  RouterOutput last_;
  double loss_scale_ = 1.0;
  bool recorded_ = false;               // this micro-batch's utilisation is in pending_
  std::vector<at::Tensor> pending_;     // per micro-batch: E fractions and a 1 (the rank count after the sum)
};
TORCH_MODULE(MoE);

// Capacity (spec 2.12): per top-k slot, each expert keeps its first
// ceil(N * k / E * capacity_factor) tokens in token order; the weights of the
// rest become 0.
FORGE_API at::Tensor apply_capacity(const at::Tensor& weights, const at::Tensor& indices, int64_t num_experts,
                                    double capacity_factor);

}  // namespace forge::nn
