#include "core/checkpoint/state_dict.h"

#include <set>

#include <fmt/format.h>

#include "core/util/strings.h"
#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

std::vector<std::pair<std::string, at::Tensor>> state_dict(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : module.named_parameters(true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) out.emplace_back(b.key(), b.value());
  return out;
}

TensorSource TensorSource::from_file(const safetensors::File& file) {
  TensorSource s;
  s.description = file.path();
  s.contains = [&file](const std::string& n) { return file.contains(n); };
  s.load = [&file](const std::string& n) { return file.load(n); };
  s.names = [&file] {
    std::vector<std::string> out;
    for (const auto& t : file.tensors()) out.push_back(t.name);
    return out;
  };
  s.shape = [&file](const std::string& n) { return file.info(n).shape; };
  return s;
}

TensorSource TensorSource::from_map(const std::map<std::string, at::Tensor>& tensors, std::string description) {
  TensorSource s;
  s.description = std::move(description);
  s.contains = [&tensors](const std::string& n) { return tensors.count(n) > 0; };
  s.load = [&tensors](const std::string& n) { return tensors.at(n); };
  s.names = [&tensors] {
    std::vector<std::string> out;
    for (const auto& [k, v] : tensors) out.push_back(k);
    return out;
  };
  s.shape = [&tensors](const std::string& n) { return tensors.at(n).sizes().vec(); };
  return s;
}

static std::string few(const std::vector<std::string>& v) {
  std::vector<std::string> head(v.begin(), v.begin() + std::min<size_t>(v.size(), 5));
  return util::join(head, ", ") + (v.size() > 5 ? fmt::format(" (+{} more)", v.size() - 5) : "");
}

LoadReport load_state_dict(torch::nn::Module& module, const TensorSource& source, bool strict) {
  LoadReport r;
  auto entries = state_dict(module);
  std::set<std::string> mine;
  torch::NoGradGuard guard;
  for (auto& [name, dst] : entries) {
    mine.insert(name);
    if (!source.contains(name)) {
      r.missing.push_back(name);
      continue;
    }
    auto shape = source.shape(name);
    if (at::IntArrayRef(shape) != dst.sizes())
      throw FormatError(fmt::format("{}: tensor '{}' has shape {} but the model expects {}", source.description, name,
                                    util::shape(at::IntArrayRef(shape)), util::shape(dst)));
    dst.copy_(source.load(name));
    ++r.loaded;
  }
  for (const auto& n : source.names())
    if (!mine.count(n)) r.unexpected.push_back(n);
  if (strict && (!r.missing.empty() || !r.unexpected.empty())) {
    std::string msg = fmt::format("{}: the weights do not match the model built from the config", source.description);
    if (!r.missing.empty()) msg += fmt::format("; missing {} key(s): {}", r.missing.size(), few(r.missing));
    if (!r.unexpected.empty()) msg += fmt::format("; unexpected {} key(s): {}", r.unexpected.size(), few(r.unexpected));
    throw FormatError(msg);
  }
  return r;
}

void save_state_dict(const torch::nn::Module& module, const std::string& path,
                     const std::map<std::string, std::string>& metadata) {
  safetensors::save(path, state_dict(module), metadata);
}

}  // namespace forge
