// sum_squares.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads.
#include "core/util/sum_squares.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <fmt/format.h>

#include "core/util/cpu_vec.h"
#include "forge/error.h"

#include <algorithm>
#include <cstdint>

namespace forge::cpu_norm {

namespace {

// Values per block: each block's sum is one task's, so where the blocks start (and so the sum's bits) does not
// depend on the thread count. 2^16 fp32 values are 256 KiB, enough to be worth a task.
constexpr int64_t kBlock = int64_t{1} << 16;

// Blocks read at once by one task: four streams keep more of the memory's lines in flight than one (on the AMX
// machine 2 threads sum 230 MB in 10.7 ms four at a time, 13.9 one at a time).
constexpr int kStreams = 4;

// A value in double: exact for every dtype here.
inline double widen(float v) { return v; }
inline double widen(c10::BFloat16 v) { return cpu_vec::load(v); }
inline double widen(double v) { return v; }

// Each block's sum: 32 running sums in double, one per lane (per 16 values, two 512-bit vectors of 8 doubles:
// four chains a block), added up in a fixed order at the end. A float's (or bf16's) square is exact in double;
// a double's rounds, and the file builds without contracted multiply-adds (core/CMakeLists.txt), so every clone
// of the loop gives the same sums. The blocks of x[0..S) have the same length n; each gets the sum it gets
// alone.
template <int S, typename T>
inline __attribute__((always_inline)) void block_sums(const T* const* x, int64_t n, double* out) {
  constexpr int W = 32;
  double acc[S][W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int s = 0; s < S; ++s)
      for (int k = 0; k < W; ++k) {
        const double v = widen(x[s][j + k]);
        acc[s][k] += v * v;
      }
  for (int s = 0; s < S; ++s) {
    double tail = 0;
    for (int64_t i = j; i < n; ++i) {
      const double v = widen(x[s][i]);
      tail += v * v;
    }
    for (int w = W / 2; w > 0; w /= 2)
      for (int k = 0; k < w; ++k) acc[s][k] += acc[s][k + w];
    out[s] = acc[s][0] + tail;
  }
}

FORGE_CLONES void sums_f32(const float* const* x, int64_t n, double* out) { block_sums<1>(x, n, out); }
FORGE_CLONES void sums_bf16(const c10::BFloat16* const* x, int64_t n, double* out) { block_sums<1>(x, n, out); }
FORGE_CLONES void sums_f64(const double* const* x, int64_t n, double* out) { block_sums<1>(x, n, out); }
FORGE_CLONES void sums4_f32(const float* const* x, int64_t n, double* out) { block_sums<kStreams>(x, n, out); }
FORGE_CLONES void sums4_bf16(const c10::BFloat16* const* x, int64_t n, double* out) {
  block_sums<kStreams>(x, n, out);
}
FORGE_CLONES void sums4_f64(const double* const* x, int64_t n, double* out) { block_sums<kStreams>(x, n, out); }

// One block of one tensor: its first value, typed.
struct Block {
  const float* f32 = nullptr;
  const c10::BFloat16* bf16 = nullptr;
  const double* f64 = nullptr;
  int64_t n = 0;
};

// The sums of blocks[0, count), with one dtype's function: at once where there are kStreams whole blocks.
template <typename T, typename One, typename Four>
void sum_typed(const Block* blocks, int64_t count, const T* Block::*data, One one, Four four, double* out) {
  const bool together = count == kStreams && std::all_of(blocks, blocks + count, [&](const Block& k) {
                          return k.n == kBlock && k.*data != nullptr;
                        });
  if (together) {
    const T* p[kStreams];
    for (int s = 0; s < kStreams; ++s) p[s] = blocks[s].*data;
    four(p, kBlock, out);
    return;
  }
  for (int64_t b = 0; b < count; ++b) {
    const T* p = blocks[b].*data;
    one(&p, blocks[b].n, out + b);
  }
}

// The sums of blocks[0, count), blocks of one dtype or several.
void sum_blocks(const Block* blocks, int64_t count, double* out) {
  auto same = [&](auto Block::*data) {
    return std::all_of(blocks, blocks + count, [&](const Block& k) { return k.*data != nullptr; });
  };
  if (same(&Block::f32)) return sum_typed(blocks, count, &Block::f32, sums_f32, sums4_f32, out);
  if (same(&Block::bf16)) return sum_typed(blocks, count, &Block::bf16, sums_bf16, sums4_bf16, out);
  if (same(&Block::f64)) return sum_typed(blocks, count, &Block::f64, sums_f64, sums4_f64, out);
  for (int64_t b = 0; b < count; ++b) sum_blocks(blocks + b, 1, out + b);
}

}  // namespace

bool sums(const at::Tensor& x) {
  const auto dt = x.scalar_type();
  return x.device().is_cpu() && x.layout() == at::kStrided &&
         (dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble);
}

double sum_of_squares(const std::vector<at::Tensor>& xs) {
  RECORD_FUNCTION("forge::sum_of_squares", {});
  std::vector<at::Tensor> held;  // contiguous copies, alive until their blocks are summed
  std::vector<Block> blocks;
  for (const auto& x0 : xs) {
    if (!sums(x0))
      throw InvalidArgument(fmt::format("sum_of_squares: wants dense fp32, bf16, fp16 or fp64 CPU tensors, got a {} "
                                        "{} tensor on {}",
                                        c10::toString(x0.layout()), c10::toString(x0.scalar_type()),
                                        x0.device().str()));
    // fp16 widens to fp32 exactly.
    at::Tensor x = (x0.scalar_type() == at::kHalf ? x0.to(at::kFloat) : x0).contiguous();
    if (!x.is_same(x0)) held.push_back(x);
    for (int64_t off = 0; off < x.numel(); off += kBlock) {
      Block k;
      k.n = std::min(kBlock, x.numel() - off);
      if (x.scalar_type() == at::kFloat)
        k.f32 = x.const_data_ptr<float>() + off;
      else if (x.scalar_type() == at::kBFloat16)
        k.bf16 = x.const_data_ptr<c10::BFloat16>() + off;
      else
        k.f64 = x.const_data_ptr<double>() + off;
      blocks.push_back(k);
    }
  }
  // Tasks of kStreams consecutive blocks, whatever the thread count.
  const auto nblocks = static_cast<int64_t>(blocks.size());
  std::vector<double> block_totals(blocks.size());
  at::parallel_for(0, (nblocks + kStreams - 1) / kStreams, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t * kStreams;
      sum_blocks(blocks.data() + b, std::min<int64_t>(kStreams, nblocks - b), block_totals.data() + b);
    }
  });
  double total = 0;
  for (double s : block_totals) total += s;
  return total;
}

}  // namespace forge::cpu_norm
