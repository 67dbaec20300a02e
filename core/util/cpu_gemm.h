// Matrix products with fp32 outputs on CPUs: bf16 x bf16 by MKL's product,
// and fp32 by BLAS's sgemm for loops of small products (gemm_f32).
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
#include <c10/util/BFloat16.h>

#include <cstdint>

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

// The same on raw row-major buffers, for loops that run many small products (one per attention head) where a
// tensor per operand would cost more than the product; inside an at::parallel_for each call runs on the calling
// thread. a is (m, k) with row stride lda, or, with a_trans, stored as its (k, m) transpose; b likewise (k, n) or
// (n, k); c (m, n) with row stride ldc. m, n and k must be positive. Throws InvalidArgument when !available().
FORGE_API void gemm_bf16_f32(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, const c10::BFloat16* a,
                             int64_t lda, const c10::BFloat16* b, int64_t ldb, float* c, int64_t ldc,
                             bool accumulate);

// Whether gemm_f32 runs: BLAS's sgemm, as libtorch's CPU library exports it (MKL's on x86-64 wheels).
FORGE_API bool f32_available();

// gemm_bf16_f32's layout for fp32 operands, by that sgemm; inside an at::parallel_for each call runs on the
// calling thread (MKL's OpenMP). Throws InvalidArgument when !f32_available().
FORGE_API void gemm_f32(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                        const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

// The same into a new (m, n) fp32 tensor.
FORGE_API at::Tensor mm_bf16_f32(const at::Tensor& a, const at::Tensor& b);

}  // namespace forge::cpu_gemm
