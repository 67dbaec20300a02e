// Activation checkpointing for LibTorch, which has no torch.utils.checkpoint:
// run a block without keeping its activations, and recompute it in backward.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "forge/export.h"

namespace forge {

// A block recomputed in backward: (x, extras) -> y. It must compute the same
// thing every time it is called with the same inputs (the CPU RNG state is
// saved and restored around the recomputation, so dropout-like draws repeat).
using CheckpointedFn = std::function<at::Tensor(const at::Tensor& x, const std::vector<at::Tensor>& extras)>;

// y = fn(x, extras), keeping only x and extras for backward. `weights` are the
// trainable tensors fn reads (their gradients come from the recomputation);
// `extras` are other inputs that may need a gradient (e.g. image features of
// cross-attention). Without grad mode, or when nothing requires a gradient,
// this is fn(x, extras).
FORGE_API at::Tensor checkpointed(const CheckpointedFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& extras,
                                  const std::vector<at::Tensor>& weights);

}  // namespace forge
