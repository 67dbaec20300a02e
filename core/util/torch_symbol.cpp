// torch_symbol.h: dlsym over the process, then over the loaded libraries that may hold the symbol.
#include "core/util/torch_symbol.h"

#include <dlfcn.h>

namespace forge::util {

void* torch_symbol(const char* name) {
  if (void* f = dlsym(RTLD_DEFAULT, name)) return f;
  for (const char* lib : {"libtorch_cpu.so", "libmkl_rt.so.2", "libmkl_rt.so"})
    if (void* h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD))
      if (void* f = dlsym(h, name)) return f;
  return nullptr;
}

}  // namespace forge::util
