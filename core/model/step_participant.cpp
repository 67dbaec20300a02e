// StepParticipant defaults, the aux-loss attachment and participant discovery
// (forge/step_participant.h).
#include "forge/step_participant.h"

#include <torch/autograd.h>
#include <torch/nn/module.h>

namespace forge {

StepParticipant::~StepParticipant() = default;
void StepParticipant::begin_micro_batch(const MicroBatch&) {}
std::vector<at::Tensor> StepParticipant::step_statistics() { return {}; }
void StepParticipant::end_step(bool) {}
void StepParticipant::report(const std::string&, StepReport&) const {}

namespace {

// Forward: y. Backward: y's gradient passes through; aux receives loss_scale.
struct AttachAux : torch::autograd::Function<AttachAux> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& y, const at::Tensor& aux,
                            double loss_scale) {
    ctx->saved_data["scale"] = loss_scale;
    ctx->saved_data["aux_dtype"] = static_cast<int64_t>(aux.scalar_type());
    ctx->saved_data["aux_device"] = aux.device().str();
    return y.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const double scale = ctx->saved_data["scale"].toDouble();
    auto dtype = static_cast<at::ScalarType>(ctx->saved_data["aux_dtype"].toInt());
    at::Device device(ctx->saved_data["aux_device"].toStringRef());
    return {grads[0], at::full({}, scale, at::TensorOptions().dtype(dtype).device(device)), at::Tensor()};
  }
};

}  // namespace

at::Tensor attach_aux_loss(const at::Tensor& y, const at::Tensor& aux, double loss_scale) {
  if (!at::GradMode::is_enabled() || !aux.requires_grad()) return y;
  return AttachAux::apply(y, aux, loss_scale);
}

std::vector<std::pair<std::string, StepParticipant*>> step_participants(torch::nn::Module& root) {
  std::vector<std::pair<std::string, StepParticipant*>> out;
  if (auto* p = dynamic_cast<StepParticipant*>(&root)) out.emplace_back("", p);
  for (const auto& item : root.named_modules("", /*include_self=*/false))
    if (auto* p = dynamic_cast<StepParticipant*>(item.value().get())) out.emplace_back(item.key(), p);
  return out;
}

}  // namespace forge
