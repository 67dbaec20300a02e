// Safetensors (forge/safetensors.h): an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, optional
// "__metadata__": {str: str}}, then the data section.
#include "forge/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/util/tensor.h"
#include "forge/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge::safetensors {

namespace {

struct DType {
  const char* name;
  at::ScalarType type;
};
const DType kDTypes[] = {{"F64", at::kDouble}, {"F32", at::kFloat},  {"F16", at::kHalf},  {"BF16", at::kBFloat16},
                         {"I64", at::kLong},   {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},
                         {"U8", at::kByte},    {"BOOL", at::kBool}};

bool parse_dtype(const std::string& s, at::ScalarType& out) {
  for (const auto& d : kDTypes) {
    if (s == d.name) {
      out = d.type;
      return true;
    }
  }
  return false;
}

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MiB, as the reference implementation

}  // namespace

std::string dtype_name(at::ScalarType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  throw InvalidArgument(fmt::format("safetensors: dtype {} cannot be stored", c10::toString(t)));
}

File::File(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw FormatError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw FormatError(fmt::format("{}: not a regular file", path));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  auto fail = [&](const std::string& why) {
    if (map_) ::munmap(map_, map_size_);
    ::close(fd_);
    map_ = nullptr;
    fd_ = -1;
    throw FormatError(fmt::format("{}: {}", path, why));
  };
  if (size < 8) fail(fmt::format("truncated: {} bytes, but a safetensors file starts with an 8-byte header length", size));
  map_size_ = size;
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail(fmt::format("cannot map: {}", std::strerror(errno)));
  }
  const auto* bytes = static_cast<const uint8_t*>(map_);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeader) fail(fmt::format("header length {} is implausible (> 100 MiB); not a safetensors file", header_len));
  if (header_len > size - 8)
    fail(fmt::format("header of {} bytes points past the end of the file ({} bytes); the file is truncated or not "
                     "safetensors",
                     header_len, size));
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers beyond a double
    fail(fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!header.is_object()) fail("header is not a JSON object");
  data_ = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(fmt::format("__metadata__ value '{}' is not a string", m.key()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TensorInfo info;
    info.name = name;
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(fmt::format("tensor '{}': entry needs dtype, shape and data_offsets", name));
    if (!v["dtype"].is_string() || !parse_dtype(v["dtype"].get<std::string>(), info.scalar_type))
      fail(fmt::format("tensor '{}': unsupported dtype {}", name, v["dtype"].dump()));
    info.dtype = v["dtype"].get<std::string>();
    uint64_t numel = 1;
    if (!v["shape"].is_array()) fail(fmt::format("tensor '{}': shape is not an array", name));
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail(fmt::format("tensor '{}': shape {} has a negative or non-integer dimension", name, v["shape"].dump()));
      info.shape.push_back(d.get<int64_t>());
      numel *= static_cast<uint64_t>(d.get<int64_t>());
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(fmt::format("tensor '{}': data_offsets must be [begin, end]", name));
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.begin > info.end || info.end > data_size)
      fail(fmt::format("tensor '{}': data_offsets [{}, {}] point past the end of the data section ({} bytes); the "
                       "file is truncated or corrupt",
                       name, info.begin, info.end, data_size));
    const uint64_t want = numel * c10::elementSize(info.scalar_type);
    if (info.end - info.begin != want)
      fail(fmt::format("tensor '{}': {} x {} needs {} bytes but data_offsets span {}", name, info.dtype,
                       util::shape(at::IntArrayRef(info.shape)), want, info.end - info.begin));
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto a, auto b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end && by_offset[i]->end > by_offset[i]->begin)
      fail(fmt::format("tensors '{}' and '{}' overlap in the data section", by_offset[i - 1]->name, by_offset[i]->name));
  }
}

File::~File() {
  if (map_) ::munmap(map_, map_size_);
  if (fd_ >= 0) ::close(fd_);
}

bool File::contains(const std::string& name) const { return index_.count(name) > 0; }

const TensorInfo& File::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw FormatError(fmt::format("{}: no tensor named '{}'", path_, name));
  return tensors_[it->second];
}

at::Tensor File::load(const std::string& name, at::ScalarType dtype) const {
  const TensorInfo& ti = info(name);
  at::Tensor t = at::empty(ti.shape, at::TensorOptions().dtype(ti.scalar_type));
  if (ti.end > ti.begin) std::memcpy(t.data_ptr(), data_ + ti.begin, ti.end - ti.begin);
  if (dtype != at::ScalarType::Undefined && dtype != ti.scalar_type) t = t.to(dtype);
  return t;
}

// ------------------------------------------------------------ ModelFiles

ModelFiles::ModelFiles(const std::string& dir) {
  fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec))
    throw FormatError(fmt::format("{}: not a folder (expected a Hugging Face model folder)", dir));
  fs::path single = d / "model.safetensors";
  fs::path index = d / "model.safetensors.index.json";
  if (fs::exists(single, ec)) {
    files_.push_back(std::make_unique<File>(single.string()));
    for (const auto& t : files_[0]->tensors()) where_[t.name] = 0;
    return;
  }
  if (!fs::exists(index, ec))
    throw FormatError(fmt::format("{}: has neither model.safetensors nor model.safetensors.index.json", dir));
  json j;
  try {
    std::ifstream in(index);
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON ({})", index.string(), e.what()));
  }
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    throw FormatError(fmt::format("{}: needs a \"weight_map\" object {{tensor: shard file}}", index.string()));
  std::map<std::string, size_t> shard_index;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw FormatError(fmt::format("{}: weight_map[\"{}\"] is not a file name", index.string(), it.key()));
    std::string shard = it.value().get<std::string>();
    if (!shard_index.count(shard)) {
      shard_index[shard] = files_.size();
      files_.push_back(std::make_unique<File>((d / shard).string()));
    }
    size_t f = shard_index[shard];
    if (!files_[f]->contains(it.key()))
      throw FormatError(fmt::format("{}: the index says '{}' is in {}, but that shard has no such tensor",
                                    index.string(), it.key(), shard));
    where_[it.key()] = f;
  }
}

std::vector<std::string> ModelFiles::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : where_) out.push_back(k);
  return out;
}
bool ModelFiles::contains(const std::string& name) const { return where_.count(name) > 0; }
const TensorInfo& ModelFiles::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(fmt::format("no tensor named '{}' in the model files", name));
  return files_[it->second]->info(name);
}
at::Tensor ModelFiles::load(const std::string& name, at::ScalarType dtype) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(fmt::format("no tensor named '{}' in the model files", name));
  return files_[it->second]->load(name, dtype);
}
const std::string& ModelFiles::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(fmt::format("no tensor named '{}' in the model files", name));
  return files_[it->second]->path();
}

// ------------------------------------------------------------ save

void save(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  std::vector<PendingTensor> pending;
  for (const auto& [name, t] : tensors)
    pending.push_back({name, t.scalar_type(), t.sizes().vec(), [t = t] { return t; }});
  save_streamed(path, pending, metadata);
}

void save_streamed(const std::string& path, const std::vector<PendingTensor>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (header.contains(t.name)) throw InvalidArgument(fmt::format("safetensors save: tensor '{}' given twice", t.name));
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const uint64_t bytes = static_cast<uint64_t>(numel) * c10::elementSize(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  const std::string tmp = path + ".tmp";
  std::string failure;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) failure = fmt::format("{}: cannot write: {}", tmp, std::strerror(errno));
    uint64_t n = h.size();
    char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    if (failure.empty()) {
      out.write(len, 8);
      out.write(h.data(), static_cast<std::streamsize>(h.size()));
    }
    for (const auto& t : tensors) {
      at::Tensor c = t.produce().detach();  // always: it may be a collective
      if (c.scalar_type() != t.dtype || c.sizes() != at::IntArrayRef(t.shape)) {
        out.close();
        std::error_code ec;
        fs::remove(tmp, ec);
        throw InvalidArgument(fmt::format("safetensors save: '{}' was declared {} {} but is {} {}", t.name,
                                          dtype_name(t.dtype), fmt::join(t.shape, "x"), dtype_name(c.scalar_type()),
                                          fmt::join(c.sizes().vec(), "x")));
      }
      if (!failure.empty()) continue;
      c = c.to(at::kCPU).contiguous();
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
      if (!out) failure = fmt::format("{}: write failed: {}", tmp, std::strerror(errno));
    }
    if (failure.empty()) {
      out.flush();
      if (!out) failure = fmt::format("{}: write failed: {}", tmp, std::strerror(errno));
    }
  }
  std::error_code ec;
  if (!failure.empty()) {
    fs::remove(tmp, ec);
    throw RuntimeError(failure);
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw RuntimeError(fmt::format("{}: cannot move into place: {}", path, ec.message()));
  }
}

}  // namespace forge::safetensors
