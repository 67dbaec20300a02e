// Fuzz target: the safetensors reader (header JSON, dtypes, shapes, offsets).
// Input: a .safetensors file. Properties: File() either accepts it or throws
// a forge error; every tensor it lists loads, with numel = prod(shape), in its
// own dtype and converted to float; ModelFiles over the same folder agrees.
#include <ATen/ATen.h>

#include "forge/safetensors.h"
#include "fuzz/support.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string path = fuzz::write_file("model/model.safetensors",
                                      std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::expect_forge_errors([&] {
    safetensors::File file(path);
    for (const auto& info : file.tensors()) {
      int64_t numel = 1;
      for (int64_t d : info.shape) numel *= d;
      at::Tensor t = file.load(info.name);
      if (t.numel() != numel || t.sizes().vec() != info.shape)
        fuzz::violated("tensor " + info.name + " loads with another shape than its header's");
      if (t.scalar_type() != info.scalar_type) fuzz::violated("tensor " + info.name + " loads with another dtype");
      if (at::isFloatingType(t.scalar_type())) (void)file.load(info.name, at::kFloat).sum();
    }
    safetensors::ModelFiles folder(fuzz::scratch_dir() + "/model");
    if (folder.names().size() != file.tensors().size()) fuzz::violated("ModelFiles lists another set of tensors");
  });
  return 0;
}
