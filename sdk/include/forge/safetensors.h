// Safetensors reading and writing (https://huggingface.co/docs/safetensors).
// The header is validated before any tensor is touched: JSON well formed,
// dtypes known, shapes non-negative, data_offsets inside the file and
// consistent with dtype x shape, no overlaps. Errors are forge::FormatError
// naming the file and the tensor.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "forge/export.h"

namespace forge::safetensors {

struct FORGE_API TensorInfo {
  std::string name;
  std::string dtype;  // as in the file: "F32", "BF16", ...
  at::ScalarType scalar_type = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets in the data section
  uint64_t end = 0;
};

// One .safetensors file, memory-mapped.
class FORGE_API File {
 public:
  explicit File(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // FormatError if absent
  // A copy of the tensor on CPU; converted to `dtype` unless it is Undefined.
  at::Tensor load(const std::string& name, at::ScalarType dtype = at::ScalarType::Undefined) const;

 private:
  std::string path_;
  int fd_ = -1;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model folder: model.safetensors, or the shards listed in
// model.safetensors.index.json.
class FORGE_API ModelFiles {
 public:
  explicit ModelFiles(const std::string& dir);
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  at::Tensor load(const std::string& name, at::ScalarType dtype = at::ScalarType::Undefined) const;
  // The file that holds `name` (for messages).
  const std::string& file_of(const std::string& name) const;

 private:
  std::vector<std::unique_ptr<File>> files_;
  std::map<std::string, size_t> where_;
};

// Writes tensors (any device; copied to CPU) in order, with optional
// string metadata, to `path` through a temporary file renamed into place.
FORGE_API void save(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                    const std::map<std::string, std::string>& metadata = {});

// A tensor written by save_streamed: its dtype and shape up front (they go
// in the header), its values from `produce`, called once, in order.
struct FORGE_API PendingTensor {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  std::function<at::Tensor()> produce;
};

// Like save, but holds one tensor in memory at a time. `produce` is called
// for every tensor even after a write fails (it may be a collective that
// other ranks wait on); the failure is thrown at the end and the temporary
// file removed. A produced tensor whose dtype or shape differs from what was
// declared is an InvalidArgument.
FORGE_API void save_streamed(const std::string& path, const std::vector<PendingTensor>& tensors,
                             const std::map<std::string, std::string>& metadata = {});

// "F32" <-> at::kFloat, ...
FORGE_API std::string dtype_name(at::ScalarType t);

}  // namespace forge::safetensors
