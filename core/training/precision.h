// Which precision a step computes in (D5): bf16 autocast over fp32 master
// weights and fp32 AdamW state, or fp32 throughout. On CUDA "bf16" always
// means bf16 compute. On a CPU it does when the CPU has native bf16 matrix
// units (AMX or AVX512-BF16), where bf16 GEMMs run several times faster than
// fp32 ones; elsewhere emulated bf16 would be slower than fp32, so the step
// stays in fp32 and says so.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "forge/export.h"

namespace forge {

struct TrainConfig;

// The CPU's bf16 matrix instructions: "AMX", "AVX512-BF16" or "" (none).
FORGE_API std::string cpu_bf16_isa();

struct FORGE_API Precision {
  bool bf16 = false;                         // autocast to bf16 in forward
  at::DeviceType device = at::DeviceType::CPU;  // whose autocast
  std::string reason;                        // why this path, for the log and `forge bench`
  // "bf16 compute (CPU autocast, AMX), fp32 master weights and AdamW state" or "fp32".
  std::string describe() const;
  at::ScalarType compute_dtype() const { return bf16 ? at::kBFloat16 : at::kFloat; }
};

// What `train.mixed_precision` means on `device`.
FORGE_API Precision resolve_precision(const std::string& mixed_precision, const at::Device& device);

// Autocast on for the precision's device for this scope (nothing when fp32);
// the previous state is restored and the cast cache cleared on exit.
class FORGE_API AutocastScope {
 public:
  explicit AutocastScope(const Precision& p);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_ = false;
  at::DeviceType device_ = at::DeviceType::CPU;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

}  // namespace forge
