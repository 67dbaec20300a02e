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

// Each block's sum: 32 running sums in double, one per lane (per 16 values, two 512-bit vectors of 8 doubles:
// four chains a block), added up in a fixed order at the end. A float's (or bf16's) square is exact in double,
// so fused and separate multiply-adds give the same bits, and every clone of the loop the same sums. The
// blocks of x[0..S) have the same length n; each gets the sum it gets alone.
template <int S, typename T>
inline __attribute__((always_inline)) void block_sums(const T* const* x, int64_t n, double* out) {
  constexpr int W = 32;
  double acc[S][W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int s = 0; s < S; ++s)
      for (int k = 0; k < W; ++k) {
        const double v = cpu_vec::load(x[s][j + k]);
        acc[s][k] += v * v;
      }
  for (int s = 0; s < S; ++s) {
    double tail = 0;
    for (int64_t i = j; i < n; ++i) {
      const double v = cpu_vec::load(x[s][i]);
      tail += v * v;
    }
    for (int w = W / 2; w > 0; w /= 2)
      for (int k = 0; k < w; ++k) acc[s][k] += acc[s][k + w];
    out[s] = acc[s][0] + tail;
  }
}

FORGE_CLONES void sums_f32(const float* const* x, int64_t n, double* out) { block_sums<1>(x, n, out); }
FORGE_CLONES void sums_bf16(const c10::BFloat16* const* x, int64_t n, double* out) { block_sums<1>(x, n, out); }
FORGE_CLONES void sums4_f32(const float* const* x, int64_t n, double* out) { block_sums<kStreams>(x, n, out); }
FORGE_CLONES void sums4_bf16(const c10::BFloat16* const* x, int64_t n, double* out) {
  block_sums<kStreams>(x, n, out);
}

struct Block {
  const void* data;
  bool bf16;
  int64_t n;
};

// The sums of blocks[0, count): at once where there are kStreams whole blocks of one dtype.
void sum_blocks(const Block* blocks, int64_t count, double* out) {
  const bool together = count == kStreams && std::all_of(blocks, blocks + count, [&](const Block& k) {
                          return k.n == kBlock && k.bf16 == blocks[0].bf16;
                        });
  if (together) {
    const void* p[kStreams];
    for (int s = 0; s < kStreams; ++s) p[s] = blocks[s].data;
    if (blocks[0].bf16)
      sums4_bf16(reinterpret_cast<const c10::BFloat16* const*>(p), kBlock, out);
    else
      sums4_f32(reinterpret_cast<const float* const*>(p), kBlock, out);
    return;
  }
  for (int64_t b = 0; b < count; ++b) {
    const void* p = blocks[b].data;
    if (blocks[b].bf16)
      sums_bf16(reinterpret_cast<const c10::BFloat16* const*>(&p), blocks[b].n, out + b);
    else
      sums_f32(reinterpret_cast<const float* const*>(&p), blocks[b].n, out + b);
  }
}

}  // namespace

double sum_of_squares(const std::vector<at::Tensor>& xs) {
  RECORD_FUNCTION("forge::sum_of_squares", {});
  std::vector<at::Tensor> held;  // contiguous copies, alive until their blocks are summed
  std::vector<Block> blocks;
  double others = 0;             // dtypes summed by ATen, in double
  for (const auto& x0 : xs) {
    if (!x0.device().is_cpu())
      throw InvalidArgument(fmt::format("sum_of_squares: wants CPU tensors, got one on {}", x0.device().str()));
    at::Tensor x = x0;
    if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) {
      // fp16 converts to fp32 exactly; double (and integers) keep their own precision only in double.
      if (x.scalar_type() == at::kHalf) {
        x = x.to(at::kFloat);
      } else {
        others += x.to(at::kDouble).square().sum().item<double>();
        continue;
      }
    }
    x = x.contiguous();
    if (!x.is_same(x0)) held.push_back(x);
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    const char* base = static_cast<const char*>(x.const_data_ptr());
    for (int64_t off = 0; off < x.numel(); off += kBlock)
      blocks.push_back({base + off * x.element_size(), bf16, std::min(kBlock, x.numel() - off)});
  }
  // Tasks of kStreams consecutive blocks, whatever the thread count.
  const auto nblocks = static_cast<int64_t>(blocks.size());
  std::vector<double> sums(blocks.size());
  at::parallel_for(0, (nblocks + kStreams - 1) / kStreams, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t * kStreams;
      sum_blocks(blocks.data() + b, std::min<int64_t>(kStreams, nblocks - b), sums.data() + b);
    }
  });
  double total = others;
  for (double s : sums) total += s;
  return total;
}

}  // namespace forge::cpu_norm
