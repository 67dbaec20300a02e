// bf16 copies of fp32 weights, packed as bf16 compute on a CPU reads them,
// kept between forwards while the weights do not change.
//
// Under bf16 autocast each CPU linear (and the output head) would cast its
// fp32 weights at every forward: a read of every weight and a write of its
// copy each step (18 ms of the `small` recipe's step). For the weights an
// optimizer registers (FusedAdamW's fp32 CPU parameters), the copies are
// kept, and the optimizer writes them in the pass that updates the weights,
// so a step casts none of them. A copy is cast again when its weight's
// version or storage changed since it was written: an in-place op on the
// weight (a checkpoint load, an edit under NoGradGuard) bumps the version,
// set_data gives new storage. A write that bypasses both (through .data(),
// or a raw pointer) is not seen: do not edit registered weights that way.
// Other weights (no FusedAdamW, FSDP's gathered weights, a packing with a
// frozen member) are cast at each call, as before.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::bf16_weights {

// The bf16 (Σ rows, in) matrix of `weights` (fp32 2-d CPU tensors of one
// width) stacked by rows, each rounded as a cast rounds it. Kept when every
// weight is registered; a fresh cast otherwise.
FORGE_API at::Tensor packed(at::TensorList weights);

// For the optimizer: registers `p` (its copies are kept from the next
// forward on) and returns the rows of a kept packed matrix that hold p's
// copy, or an undefined tensor when none holds it yet.
FORGE_API at::Tensor copy_of(const at::Tensor& p);

// After the optimizer wrote p's new values into copy_of(p) and bumped p's
// version: that copy is current. The packed matrix's own version is bumped,
// so that a backward which saved it before the update refuses to run.
FORGE_API void mark_current(const at::Tensor& p);

// Forgets every kept copy and registration (tests; a process that builds a
// second model).
FORGE_API void clear();

}  // namespace forge::bf16_weights
