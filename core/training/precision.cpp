#include "core/training/precision.h"

#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>

#include <fmt/format.h>

namespace forge {

std::string cpu_bf16_isa() {
  static const std::string isa = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    auto has = [&](const char* key) {
      auto it = caps.find(key);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    if (has("amx_bf16") && has("amx_tile")) return std::string("AMX");
    if (has("avx512_bf16")) return std::string("AVX512-BF16");
    return std::string();
  }();
  return isa;
}

std::string Precision::describe() const {
  if (!bf16) return "fp32";
  return fmt::format("bf16 compute ({} autocast), fp32 master weights and AdamW state",
                     device == at::DeviceType::CUDA ? "CUDA" : "CPU " + cpu_bf16_isa());
}

Precision resolve_precision(const std::string& mixed_precision, const at::Device& device) {
  Precision p;
  p.device = device.type();
  if (mixed_precision != "bf16") {
    p.reason = fmt::format("mixed_precision = \"{}\"", mixed_precision);
    return p;
  }
  if (device.is_cuda()) {
    p.bf16 = true;
    p.reason = "mixed_precision = \"bf16\" on CUDA";
  } else if (const std::string isa = cpu_bf16_isa(); !isa.empty()) {
    p.bf16 = true;
    p.reason = fmt::format("mixed_precision = \"bf16\" and the CPU has {} bf16 matrix instructions", isa);
  } else {
    p.reason = "mixed_precision = \"bf16\", but this CPU has neither AMX nor AVX512-BF16, so emulated bf16 would be "
               "slower than fp32: computing in fp32";
  }
  return p;
}

AutocastScope::AutocastScope(const Precision& p) : on_(p.bf16), device_(p.device) {
  if (!on_) return;
  was_enabled_ = at::autocast::is_autocast_enabled(device_);
  was_dtype_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, at::kBFloat16);
}

AutocastScope::~AutocastScope() {
  if (!on_) return;
  at::autocast::set_autocast_enabled(device_, was_enabled_);
  at::autocast::set_autocast_dtype(device_, was_dtype_);
  if (!was_enabled_) at::autocast::clear_cache();
}

}  // namespace forge
