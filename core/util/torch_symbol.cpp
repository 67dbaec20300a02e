// torch_symbol.h: dlsym over libtorch_cpu.so first (a generic name such as sgemm_ may also be in another BLAS
// in the process, with its own threading), then the process, then MKL's runtime library.
#include "core/util/torch_symbol.h"

#include <dlfcn.h>

namespace forge::util {

void* torch_symbol(const char* name) {
  if (void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD))
    if (void* f = dlsym(h, name)) return f;
  if (void* f = dlsym(RTLD_DEFAULT, name)) return f;
  for (const char* lib : {"libmkl_rt.so.2", "libmkl_rt.so"})
    if (void* h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD))
      if (void* f = dlsym(h, name)) return f;
  return nullptr;
}

}  // namespace forge::util
