// Tensor helpers for messages.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include <fmt/format.h>

namespace forge::util {

// "(2, 3, 4)"
inline std::string shape(const at::Tensor& t) {
  if (!t.defined()) return "(undefined)";
  return fmt::format("({})", fmt::join(t.sizes().vec(), ", "));
}
inline std::string shape(at::IntArrayRef s) { return fmt::format("({})", fmt::join(s.vec(), ", ")); }
inline std::string dtype(const at::Tensor& t) { return std::string(c10::toString(t.scalar_type())); }

}  // namespace forge::util
