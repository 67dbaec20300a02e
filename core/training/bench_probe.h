// What `forge bench` measures about the machine rather than the model: the
// GEMM rate at a model's own shapes (the practical ceiling for its FLOP/s),
// peak memory, which attention kernel SDPA picks, and the library versions.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include <nlohmann/json.hpp>

#include "forge/export.h"

namespace forge {

// Waits for the device's queued work (a no-op on the CPU).
FORGE_API void device_sync(const at::Device& device);

struct FORGE_API GemmRate {
  std::string what;  // e.g. "MLP up-projection"
  int64_t m = 0, k = 0, n = 0;
  double flops_per_s = 0;  // 2mkn / median time of at::mm
};

// Times at::mm of (m x k) by (k x n) in `dtype` on `device`.
FORGE_API GemmRate measure_gemm(const std::string& what, int64_t m, int64_t k, int64_t n, at::ScalarType dtype,
                                const at::Device& device);

// The kernel at::scaled_dot_product_attention picks for the decoder's
// training call: causal, no mask, (batch, heads, seq, head_dim) queries over
// kv_heads keys and values (GQA inside the kernel when fewer): "flash",
// "efficient", "cudnn", "math", ...; on a CPU in bf16, where forge's own
// backward replaces the flash one (core/model/attention_cpu.h), it says so.
FORGE_API std::string sdpa_backend(int64_t batch, int64_t heads, int64_t kv_heads, int64_t seq, int64_t head_dim,
                                   at::ScalarType dtype, const at::Device& device);

// Peak bytes: on CUDA the caching allocator's peak since reset_peak_memory;
// on the CPU the process's peak resident set (it cannot be reset).
FORGE_API void reset_peak_memory(const at::Device& device);
FORGE_API double peak_memory_bytes(const at::Device& device);

// torch, CUDA, cuDNN and NCCL versions, the CPU's vector ISA and bf16 units,
// and the thread count.
FORGE_API nlohmann::json runtime_versions(const at::Device& device);

}  // namespace forge
