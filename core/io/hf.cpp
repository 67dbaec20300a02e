// Loading Hugging Face folders by parameter name (forge/hf.h).
#include "forge/hf.h"

#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/util/strings.h"
#include "core/util/tensor.h"
#include "forge/error.h"
#include "forge/safetensors.h"

namespace forge::hf {

using json = nlohmann::json;

ConfigJson::ConfigJson(const std::string& path) : path_(path) {
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: cannot open (a Hugging Face model folder needs it)", path));
  auto doc = std::make_shared<json>();
  try {
    *doc = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  if (!doc->is_object()) throw FormatError(fmt::format("{}: expected a JSON object", path));
  node_ = doc.get();
  root_ = doc;
}
ConfigJson::ConfigJson(std::string path, std::shared_ptr<const void> root, const void* node)
    : path_(std::move(path)), root_(std::move(root)), node_(node) {}
ConfigJson::~ConfigJson() = default;

namespace {
const json& obj(const void* n) { return *static_cast<const json*>(n); }
}  // namespace

bool ConfigJson::has(const std::string& key) const { return obj(node_).contains(key) && !obj(node_)[key].is_null(); }

ConfigJson ConfigJson::sub(const std::string& key) const {
  if (!has(key) || !obj(node_)[key].is_object())
    throw FormatError(fmt::format("{}: \"{}\" must be an object", path_, key));
  return ConfigJson(path_, root_, &obj(node_)[key]);
}

int64_t ConfigJson::integer(const std::string& key, int64_t fallback) const {
  if (!has(key)) return fallback;
  const json& v = obj(node_)[key];
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) {  // e.g. image_size = [224, 224]
    for (const auto& e : v)
      if (e != v[0]) throw FormatError(fmt::format("{}: \"{}\" = {} is not square; forge needs square sizes", path_, key, v.dump()));
    return v[0].get<int64_t>();
  }
  if (!v.is_number_integer()) throw FormatError(fmt::format("{}: \"{}\" must be an integer, got {}", path_, key, v.dump()));
  return v.get<int64_t>();
}

double ConfigJson::number(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  const json& v = obj(node_)[key];
  if (!v.is_number()) throw FormatError(fmt::format("{}: \"{}\" must be a number, got {}", path_, key, v.dump()));
  return v.get<double>();
}

bool ConfigJson::boolean(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  const json& v = obj(node_)[key];
  if (!v.is_boolean()) throw FormatError(fmt::format("{}: \"{}\" must be true or false, got {}", path_, key, v.dump()));
  return v.get<bool>();
}

std::string ConfigJson::string(const std::string& key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  const json& v = obj(node_)[key];
  if (!v.is_string()) throw FormatError(fmt::format("{}: \"{}\" must be a string, got {}", path_, key, v.dump()));
  return v.get<std::string>();
}

std::vector<double> ConfigJson::numbers(const std::string& key, const std::vector<double>& fallback) const {
  if (!has(key)) return fallback;
  const json& v = obj(node_)[key];
  std::vector<double> out;
  if (v.is_number()) return {v.get<double>()};
  if (!v.is_array()) throw FormatError(fmt::format("{}: \"{}\" must be a list of numbers, got {}", path_, key, v.dump()));
  for (const auto& e : v) {
    if (!e.is_number()) throw FormatError(fmt::format("{}: \"{}\" must be a list of numbers, got {}", path_, key, v.dump()));
    out.push_back(e.get<double>());
  }
  return out;
}

Preprocess read_preprocess(const std::string& dir, Preprocess p) {
  auto path = (std::filesystem::path(dir) / "preprocessor_config.json").string();
  if (!std::filesystem::exists(path)) return p;
  ConfigJson j(path);
  auto three = [&](const char* key, std::array<double, 3>& dst) {
    auto v = j.numbers(key, {dst[0], dst[1], dst[2]});
    if (v.size() == 1) v = {v[0], v[0], v[0]};
    if (v.size() != 3) throw FormatError(fmt::format("{}: \"{}\" needs 3 values (R, G, B)", path, key));
    dst = {v[0], v[1], v[2]};
  };
  three("image_mean", p.mean);
  three("image_std", p.std);
  if (!j.boolean("do_normalize", true)) {
    p.mean = {0, 0, 0};
    p.std = {1, 1, 1};
  }
  int64_t resample = j.integer("resample", p.resize == "bicubic" ? 3 : 2);
  if (resample != 2 && resample != 3)
    throw FormatError(fmt::format("{}: \"resample\" = {} is not supported; forge resizes bilinear (2) or bicubic (3)",
                                  path, resample));
  p.resize = resample == 3 ? "bicubic" : "bilinear";
  return p;
}

std::string find_prefix(const std::string& dir, const std::vector<std::string>& candidates) {
  safetensors::ModelFiles files(dir);
  auto names = files.names();
  for (const auto& c : candidates) {
    for (const auto& n : names)
      if (util::starts_with(n, c)) return c;
  }
  throw FormatError(fmt::format("{}: no weights under {}", dir, util::quoted_list(candidates)));
}

int64_t load_weights(torch::nn::Module& module, const std::string& dir, const std::string& prefix,
                     const std::vector<std::string>& ignored) {
  safetensors::ModelFiles files(dir);
  std::set<std::string> wanted;
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& p : module.named_parameters(true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) targets.emplace_back(b.key(), b.value());
  torch::NoGradGuard guard;
  int64_t n = 0;
  for (auto& [name, dst] : targets) {
    const std::string key = prefix + name;
    wanted.insert(key);
    if (!files.contains(key)) {
      // Name the file that should hold it: the index of a sharded checkpoint, else model.safetensors.
      const auto folder = std::filesystem::path(dir);
      const std::string where = std::filesystem::exists(folder / "model.safetensors.index.json")
                                    ? (folder / "model.safetensors.index.json").string()
                                    : (folder / "model.safetensors").string();
      throw FormatError(fmt::format("{}: missing weight '{}' (the model built from {}/config.json needs it)", where,
                                    key, dir));
    }
    const auto& info = files.info(key);
    const std::string& file = files.file_of(key);
    if (!c10::isFloatingType(info.scalar_type))
      throw FormatError(fmt::format("{}: weight '{}' has dtype {}; expected a floating-point type (F32, F16, BF16)",
                                    file, key, info.dtype));
    if (at::IntArrayRef(info.shape) != dst.sizes())
      throw FormatError(fmt::format("{}: weight '{}' has shape {} but the model built from config.json expects {}",
                                    file, key, util::shape(at::IntArrayRef(info.shape)), util::shape(dst)));
    dst.copy_(files.load(key, dst.scalar_type()));
    ++n;
  }
  for (const auto& key : files.names()) {
    if (!util::starts_with(key, prefix) || wanted.count(key)) continue;
    std::string rel = key.substr(prefix.size());
    bool skip = false;
    for (const auto& pat : ignored) skip = skip || util::fnmatch(pat, rel);
    if (!skip)
      throw FormatError(fmt::format("{}: unexpected weight '{}' (no such parameter in the model built from "
                                    "config.json; is the config for another architecture?)",
                                    files.file_of(key), key));
  }
  return n;
}

}  // namespace forge::hf
