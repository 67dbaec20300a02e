// A function that libtorch's CPU library exports but declares in no header
// forge may include: MKL's products (core/util/cpu_gemm.h) and Sleef's vector
// exp (core/model/silu_mul_cpu.cpp).
#pragma once

namespace forge::util {

// The address of `name` in the process (libtorch_cpu.so is loaded with
// forge's core), else in libtorch_cpu.so or MKL's runtime library where
// those are loaded; nullptr where none has it. Nothing is loaded that was not.
void* torch_symbol(const char* name);

}  // namespace forge::util
