#include "core/training/bench_probe.h"

#include <ATen/DeviceAccelerator.h>
#include <ATen/Parallel.h>
#include <ATen/SDPBackend.h>
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/distributed/nccl.h"
#include "core/model/attention_cpu.h"
#include "core/training/precision.h"

namespace forge {

void device_sync(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

GemmRate measure_gemm(const std::string& what, int64_t m, int64_t k, int64_t n, at::ScalarType dtype,
                      const at::Device& device) {
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  at::Tensor a = at::randn({m, k}, opts), b = at::randn({k, n}, opts), c = at::empty({m, n}, opts);
  std::vector<double> times;
  for (int i = 0; i < 8; ++i) {
    device_sync(device);
    const auto t0 = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    device_sync(device);
    if (i >= 2) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  return GemmRate{what, m, k, n, 2.0 * static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n) / t};
}

std::string sdpa_backend(int64_t batch, int64_t heads, int64_t kv_heads, int64_t seq, int64_t head_dim,
                         at::ScalarType dtype, const at::Device& device) {
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  at::Tensor q = at::empty({batch, heads, seq, head_dim}, opts);
  at::Tensor kv = at::empty({batch, kv_heads, seq, head_dim}, opts);
  const auto choice = static_cast<at::SDPBackend>(
      at::_fused_sdp_choice(q, kv, kv, {}, 0.0, /*is_causal=*/true, std::nullopt, /*enable_gqa=*/heads != kv_heads));
  switch (choice) {
    case at::SDPBackend::math: return "math";
    case at::SDPBackend::flash_attention: {
      if (device.is_cuda()) return "flash";
      // Training on a CPU in bf16, or fp32 where sgemm is found: nn::causal_attention's own backward (attention_cpu.h).
      const at::Tensor qg = q.requires_grad_(true), kvg = kv.requires_grad_(true);
      return fused::causal_attention_fusable(qg, kvg, kvg) ? "flash (CPU kernel) forward, forge's GEMM backward"
                                                           : "flash (CPU kernel)";
    }
    case at::SDPBackend::efficient_attention: return "efficient";
    case at::SDPBackend::cudnn_attention: return "cudnn";
    case at::SDPBackend::overrideable: return "overrideable";
    default: return "none";
  }
}

void reset_peak_memory(const at::Device& device) {
  if (device.is_cuda()) at::accelerator::resetPeakStats(device.index() < 0 ? 0 : device.index());
}

double peak_memory_bytes(const at::Device& device) {
  if (device.is_cuda()) {
    const auto stats = at::accelerator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak);  // [0]: all pools
  }
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) * 1024.0;
}

nlohmann::json runtime_versions(const at::Device& device) {
  nlohmann::json j{{"torch", TORCH_VERSION},
                   {"threads", at::get_num_threads()},
                   {"cpu_capability", at::get_cpu_capability()},
                   {"cpu_bf16", cpu_bf16_isa().empty() ? "none" : cpu_bf16_isa()}};
  if (device.is_cuda()) {
    const auto& hooks = at::detail::getCUDAHooks();
    j["cuda_runtime"] = hooks.versionCUDART();
    j["cudnn"] = hooks.versionCuDNN();
    j["cuda_devices"] = hooks.deviceCount();
  }
  j["nccl"] = detail::nccl_version();
  // Which malloc serves the process (the forge host links tcmalloc when the build found it).
  j["allocator"] = dlsym(RTLD_DEFAULT, "tc_malloc") ? "tcmalloc" : "glibc";
  return j;
}

}  // namespace forge
