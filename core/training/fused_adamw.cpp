#include "core/training/fused_adamw.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>

#include <map>
#include <tuple>

#include <fmt/format.h>

#include "core/model/bf16_weights.h"
#include "core/training/adamw_cpu.h"
#include "core/training/optim.h"
#include "forge/error.h"

namespace forge {

namespace {

// forge's one-pass kernel takes contiguous fp32 CPU tensors (the parameter, its gradient and its moments).
bool own_kernel(const at::Tensor& p, const torch::optim::AdamWParamState& s) {
  const auto ok = [&](const at::Tensor& t) {  // and p's shape: the pass reads p.numel() values of each
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes().equals(p.sizes());
  };
  return adamw_cpu::available() && ok(p) && ok(p.grad()) && ok(s.exp_avg()) && ok(s.exp_avg_sq()) &&
         !p.grad().is_sparse();
}

}  // namespace

at::Tensor FusedAdamW::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable(true);
    loss = closure();
  }
  step_scaled(1.0);
  return loss;
}

void FusedAdamW::step_scaled(double grad_scale) {
  at::NoGradGuard no_grad;
  for (auto& group : param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    if (o.amsgrad()) throw InvalidArgument("FusedAdamW: amsgrad is not supported");
    const adamw_cpu::Hyper hyper{o.lr(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.weight_decay(), o.eps()};
    // One ATen kernel call per (device, dtype): every list passed must agree on both.
    std::map<std::tuple<int, int, int>, std::vector<size_t>> buckets;
    auto& params = group.params();
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor& p = params[i];
      if (!p.grad().defined()) continue;
      if (p.grad().is_sparse()) throw InvalidArgument("FusedAdamW: sparse gradients are not supported");
      auto& slot = state()[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0);
        s->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        s->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        slot = std::move(s);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      if (own_kernel(p, s)) {
        s.step(s.step() + 1);
        // bf16 compute's kept copy of p, written in the same pass (core/model/bf16_weights.h).
        const at::Tensor copy = bf16_weights::copy_of(p);
        const bool write_copy = copy.defined() && copy.sizes().equals(p.sizes()) && copy.is_contiguous();
        adamw_cpu::update({p.mutable_data_ptr<float>(), p.grad().const_data_ptr<float>(),
                           s.exp_avg().mutable_data_ptr<float>(), s.exp_avg_sq().mutable_data_ptr<float>(),
                           write_copy ? copy.mutable_data_ptr<c10::BFloat16>() : nullptr, p.numel()},
                          hyper, s.step(), static_cast<float>(grad_scale));
        p.unsafeGetTensorImpl()->bump_version();  // as an in-place op would: saved copies of p are now stale
        if (write_copy) bf16_weights::mark_current(p);
        continue;
      }
      buckets[{static_cast<int>(p.device().type()), p.device().index(), static_cast<int>(p.scalar_type())}]
          .push_back(i);
    }
    for (const auto& [key, idx] : buckets) {
      std::vector<at::Tensor> ps, grads, m, v, steps;
      for (size_t i : idx) {
        const at::Tensor& p = params[i];
        auto& s = static_cast<torch::optim::AdamWParamState&>(*state()[p.unsafeGetTensorImpl()]);
        DeviceStep& d = device_steps_[p.unsafeGetTensorImpl()];
        if (d.count != s.step())  // first step, or a state loaded since
          d.tensor = at::scalar_tensor(static_cast<double>(s.step()),
                                       at::TensorOptions().dtype(at::kFloat).device(p.device()));
        s.step(s.step() + 1);
        d.count = s.step();
        ps.push_back(p);
        grads.push_back(p.grad());
        m.push_back(s.exp_avg());
        v.push_back(s.exp_avg_sq());
        steps.push_back(d.tensor);
      }
      scale_gradients(ps, grad_scale);  // ATen's kernel divides by a grad_scale; the clip multiplies
      at::_foreach_add_(steps, 1.0);    // the kernel reads the incremented count
      at::_fused_adamw_(ps, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, o.lr(), std::get<0>(o.betas()),
                        std::get<1>(o.betas()), o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false);
    }
  }
}

}  // namespace forge
