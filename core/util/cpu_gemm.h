// bf16 x bf16 -> fp32 matrix products on CPUs.
//
// ATen's CPU mm takes and returns one dtype, so a bf16 weight gradient comes
// out in bf16 and is then cast to the fp32 master's dtype: a rounding, a copy
// and, for the transposed products of a backward (dY^T X), oneDNN's slower
// path (1.2-1.4 TFLOP/s on the development machine's AMX against 2.0-2.4 for
// the product below). libtorch's CPU library bundles MKL and exports its
// cblas_gemm_bf16bf16f32, which reads bf16, accumulates in fp32 and writes
// fp32, optionally adding to what the output holds. forge looks it up at run
// time and uses it on CPUs with AMX, where it was measured. available() is
// false, and callers keep ATen's products, where the symbol is absent (a
// torch built without MKL, a non-x86 CPU), on CPUs without AMX unless
// FORGE_CPU_BF16_GEMM=mkl is set, and with FORGE_CPU_BF16_GEMM=aten.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::cpu_gemm {

// Whether mm_bf16_f32 runs MKL's product (looked up once).
FORGE_API bool available();

// c (m, n) fp32 = a (m, k) @ b (k, n), plus c's old values when `accumulate`.
// a and b are bf16 CPU matrices with a unit stride in either dim (a transposed
// view is taken as it is, with no copy); c is fp32 with unit column stride.
// Throws InvalidArgument on shapes, dtypes or layouts it cannot take, and
// when !available().
FORGE_API void mm_bf16_f32(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool accumulate);

// The same into a new (m, n) fp32 tensor.
FORGE_API at::Tensor mm_bf16_f32(const at::Tensor& a, const at::Tensor& b);

}  // namespace forge::cpu_gemm
