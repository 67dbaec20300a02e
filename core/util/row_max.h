// Each row's maximum of a 2-d CPU tensor, for a softmax over long rows (the
// loss's vocabulary rows).
//
// ATen's amax over bf16 rows runs at about a fifth of the rate of memory: 24
// ms for the small recipe's 1536 x 32000 bf16 logits on the AMX machine,
// where a sum over the same rows takes 5. For bf16 this walks the rows'
// bits instead, with integer maxima that vectorise; other dtypes go to ATen.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::cpu_rows {

// (rows) fp32: the maximum of each row of `x` (2-d, contiguous, on the CPU),
// exactly: NaN where a row holds a NaN (of either sign), -inf for a row of
// -inf, and -inf for a row of no values. Of bf16 zeros, +0 ranks above -0.
FORGE_API at::Tensor row_max(const at::Tensor& x);

}  // namespace forge::cpu_rows
