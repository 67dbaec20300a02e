// cpu_gemm.h: MKL's bf16 x bf16 -> fp32 GEMM and BLAS's sgemm, found in libtorch_cpu at run time.
#include "core/util/cpu_gemm.h"

#include <ATen/ATen.h>

#include <bit>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "core/training/precision.h"
#include "core/util/tensor.h"
#include "core/util/torch_symbol.h"
#include "forge/error.h"

namespace forge::cpu_gemm {

namespace {

// CBLAS's enums; MKL_INT is 32-bit (LP64) or 64-bit (ILP64) by how torch was linked. Every integer is passed as
// 64 bits: an LP64 MKL reads the low half of the register or stack slot, which holds the same value.
constexpr int64_t kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using GemmFn = void (*)(int64_t layout, int64_t transa, int64_t transb, int64_t m, int64_t n, int64_t k, float alpha,
                        const void* a, int64_t lda, const void* b, int64_t ldb, float beta, float* c, int64_t ldc);

GemmFn lookup() {
  const char* env = std::getenv("FORGE_CPU_BF16_GEMM");
  if (env && std::strcmp(env, "aten") == 0) return nullptr;
  // Measured faster than ATen's products on AMX only; elsewhere (AVX512-BF16 alone, AMD CPUs, where MKL may take
  // generic code) ATen's unless asked for.
  if (cpu_bf16_isa() != "AMX" && !(env && std::strcmp(env, "mkl") == 0)) return nullptr;
  return reinterpret_cast<GemmFn>(util::torch_symbol("cblas_gemm_bf16bf16f32"));
}

GemmFn gemm() {
  static const GemmFn fn = lookup();
  return fn;
}

// BLAS's Fortran sgemm, column-major, every argument by address. Integers are passed as 64-bit values: an LP64
// library reads the low half, which on x86-64 holds the same value.
using SgemmFn = void (*)(const char* transa, const char* transb, const int64_t* m, const int64_t* n,
                         const int64_t* k, const float* alpha, const float* a, const int64_t* lda, const float* b,
                         const int64_t* ldb, const float* beta, float* c, const int64_t* ldc);

SgemmFn sgemm() {
  static const SgemmFn fn = reinterpret_cast<SgemmFn>(util::torch_symbol("sgemm_"));
  return fn;
}

// A bf16 matrix as CBLAS takes it, row-major: unit column stride (as is), or unit row stride (the transpose of a
// row-major matrix); anything else is copied.
struct Operand {
  at::Tensor t;
  int64_t trans, ld;
};

Operand operand(const at::Tensor& x) {
  if (x.stride(1) == 1 && x.stride(0) >= std::max<int64_t>(1, x.size(1))) return {x, kNoTrans, x.stride(0)};
  if (x.stride(0) == 1 && x.stride(1) >= std::max<int64_t>(1, x.size(0))) return {x, kTrans, x.stride(1)};
  at::Tensor c = x.contiguous();
  return {c, kNoTrans, std::max<int64_t>(1, c.size(1))};
}

}  // namespace

bool available() { return gemm() != nullptr; }

void gemm_bf16_f32(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, const c10::BFloat16* a,
                   int64_t lda, const c10::BFloat16* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (!available())
    throw InvalidArgument("cpu_gemm: MKL's cblas_gemm_bf16bf16f32 is not available (check cpu_gemm::available())");
  gemm()(kRowMajor, a_trans ? kTrans : kNoTrans, b_trans ? kTrans : kNoTrans, m, n, k, 1.0f, a, lda, b, ldb,
         accumulate ? 1.0f : 0.0f, c, ldc);
}

void mm_bf16_f32(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool accumulate) {
  if (!available())
    throw InvalidArgument("cpu_gemm: MKL's cblas_gemm_bf16bf16f32 is not available (check cpu_gemm::available())");
  if (a.dim() != 2 || b.dim() != 2 || c.dim() != 2 || a.size(1) != b.size(0) || c.size(0) != a.size(0) ||
      c.size(1) != b.size(1))
    throw InvalidArgument(fmt::format("cpu_gemm: cannot multiply {} by {} into {}", util::shape(a), util::shape(b),
                                      util::shape(c)));
  if (a.scalar_type() != at::kBFloat16 || b.scalar_type() != at::kBFloat16 || c.scalar_type() != at::kFloat ||
      !a.device().is_cpu() || !b.device().is_cpu() || !c.device().is_cpu())
    throw InvalidArgument("cpu_gemm: takes bf16 CPU inputs and an fp32 CPU output");
  const int64_t m = c.size(0), n = c.size(1), k = a.size(1);
  if ((n > 1 && c.stride(1) != 1) || (m > 1 && c.stride(0) < n))
    throw InvalidArgument(fmt::format("cpu_gemm: the output {} with strides ({}, {}) needs rows of unit stride that "
                                      "do not overlap",
                                      util::shape(c), c.stride(0), c.stride(1)));
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) c.zero_();
    return;
  }
  const Operand A = operand(a), B = operand(b);
  gemm_bf16_f32(A.trans == kTrans, B.trans == kTrans, m, n, k, A.t.const_data_ptr<c10::BFloat16>(), A.ld,
                B.t.const_data_ptr<c10::BFloat16>(), B.ld, c.mutable_data_ptr<float>(),
                m > 1 ? c.stride(0) : std::max<int64_t>(n, 1), accumulate);
}

// The 64-bit integers read as LP64's 32-bit ones only on a little-endian CPU.
bool f32_available() { return std::endian::native == std::endian::little && sgemm() != nullptr; }

void gemm_f32(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
              const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (!f32_available())
    throw InvalidArgument("cpu_gemm: BLAS's sgemm is not in libtorch (check cpu_gemm::f32_available())");
  // Row-major c = a b is column-major c^T = b^T a^T: the operands swap, each keeping its own transpose flag.
  const char ta = a_trans ? 'T' : 'N', tb = b_trans ? 'T' : 'N';
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  sgemm()(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

at::Tensor mm_bf16_f32(const at::Tensor& a, const at::Tensor& b) {
  if (a.dim() != 2 || b.dim() != 2 || !a.device().is_cpu())
    throw InvalidArgument(fmt::format("cpu_gemm: takes two CPU matrices, got {} and {}", util::shape(a), util::shape(b)));
  at::Tensor c = at::empty({a.size(0), b.size(1)}, a.options().dtype(at::kFloat));
  mm_bf16_f32(a, b, c, false);
  return c;
}

}  // namespace forge::cpu_gemm
