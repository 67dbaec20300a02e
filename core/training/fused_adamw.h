// AdamW whose update is one fused kernel per parameter group
// (at::_fused_adamw_, vectorised on CPUs, a multi-tensor kernel on CUDA)
// instead of LibTorch's seven tensor ops per parameter. Same math, same
// state (exp_avg, exp_avg_sq and an integer step per parameter, kept in
// torch::optim::AdamW's state map), so checkpoints do not depend on which
// one ran.
#pragma once

#include <torch/optim/adamw.h>

#include <map>

#include "forge/export.h"

namespace forge {

class FORGE_API FusedAdamW final : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  at::Tensor step(LossClosure closure = nullptr) override;
  // One update with every gradient multiplied by `grad_scale` first (the
  // clip's factor, 1 for none). fp32 parameters on a CPU with AVX-512 take
  // forge's one-pass kernel (core/training/adamw_cpu.h), which scales as it
  // reads and leaves their gradients unscaled; the others' gradients are
  // scaled in place, then updated by ATen's.
  void step_scaled(double grad_scale);

 private:
  // The kernel reads each parameter's step count as a float tensor on its
  // device. They live here between steps and are incremented on the device,
  // so a step copies nothing from the host; `count` is the integer step they
  // stand for (a state loaded from a checkpoint makes them stale).
  struct DeviceStep {
    at::Tensor tensor;
    int64_t count = -1;
  };
  std::map<const void*, DeviceStep> device_steps_;
};

}  // namespace forge
