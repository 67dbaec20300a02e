// The training loss.
#pragma once

#include <ATen/ATen.h>

#include <optional>

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

// The same loss from the output head's input: cross_entropy(hidden @ weight^T,
// targets, z_loss_weight) without the (B, T, V) logits. Rows are done in
// chunks: each chunk's logits are computed (in the autocast dtype, else the
// hidden states'), reduced in fp32, and turned into their gradients at once,
// so no full-vocabulary tensor is kept and no second pass over the logits
// runs in backward. Rows whose target is -100 (prompt, padding) skip the
// head: their gradients are exact zeros. For training (it computes gradients
// in forward when hidden or weight requires them).
// `valid_targets` (the count of targets != -100, when the caller knows it
// from the labels on the host) spares a device-to-host sync. On a CPU it is
// checked, and a wrong count throws InvalidArgument.
FORGE_API LossValue linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                         double z_loss_weight = 0.0, std::optional<int64_t> valid_targets = {});

}  // namespace forge
