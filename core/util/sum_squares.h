// The sum of squares of many CPU tensors' values, for the global gradient
// norm that clipping divides by.
//
// ATen's 2-norm of a whole fp32 CPU tensor walks it on one thread with one
// fp32 running sum: about 10 GB/s on the AMX machine, a quarter of the rate of
// memory, and it drifts as the sum grows (4094.1 for the 4096.8 of 2^24
// standard normal values). This pass adds each value's square in double
// (a float's square is exact there), in fixed blocks spread over the threads,
// so the sum is exact to double rounding, at the rate of memory, and the same
// bits on any thread count.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "forge/export.h"

namespace forge::cpu_norm {

// Whether sum_of_squares takes x: a dense (strided, any strides) CPU tensor
// of fp32, bf16, fp16 or fp64.
FORGE_API bool sums(const at::Tensor& x);

// Σ x² over every value of every tensor in `xs`, each one that sums() takes
// (fp32 and bf16 read in place, fp16 widened to fp32 first, fp64 squared and
// added in double). NaN if any value is NaN, inf if any is infinite.
// InvalidArgument for a tensor that sums() refuses.
FORGE_API double sum_of_squares(const std::vector<at::Tensor>& xs);

}  // namespace forge::cpu_norm
