// A function that libtorch's CPU library exports but declares in no header
// forge may include: MKL's products (core/util/cpu_gemm.h) and Sleef's vector
// exp (core/model/silu_mul_cpu.cpp).
#pragma once

namespace forge::util {

// The address of `name` in libtorch_cpu.so (loaded with forge's core), else
// anywhere in the process, else in MKL's runtime library where that is
// loaded; nullptr where none has it. Nothing is loaded that was not.
void* torch_symbol(const char* name);

}  // namespace forge::util
