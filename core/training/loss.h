// The training loss.
#pragma once

#include <ATen/ATen.h>

#include "forge/export.h"

namespace forge {

struct FORGE_API LossValue {
  at::Tensor loss;       // scalar, with graph
  int64_t tokens = 0;    // targets that counted (!= -100)
};

// Mean token cross-entropy over targets != -100 (computed in fp32), plus
// z_loss_weight * mean(logsumexp(logits)^2) over the same positions. A batch
// whose targets are all ignored gives a zero loss that still has a graph, so
// backward runs and every gradient is zero (D10).
FORGE_API LossValue cross_entropy(const at::Tensor& logits, const at::Tensor& targets, double z_loss_weight = 0.0);

}  // namespace forge
