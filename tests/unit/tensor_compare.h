// How far a tensor is from a reference, for tests that bound an error rather than ask for equal bits.
#pragma once

#include <ATen/ATen.h>

namespace forge::test {

// ||got - want|| / ||want||, both taken to fp64 first (any dtype, any device).
inline double rel_err(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor w = want.to(at::kDouble);
  return (got.to(at::kDouble) - w).norm().item<double>() / w.norm().item<double>();
}

}  // namespace forge::test
