#include "core/registry/registry.h"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>
#include <torch/headeronly/version.h>

#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/logging.h"
#include "forge/plugin.h"
#include "forge/version.h"

namespace fs = std::filesystem;

namespace forge {

// Key functions of the plugin-facing interfaces.
EncoderPlugin::~EncoderPlugin() = default;
std::unique_ptr<EncoderConfig> EncoderPlugin::make_config() const { return std::make_unique<EncoderConfig>(); }
AdapterPlugin::~AdapterPlugin() = default;
std::unique_ptr<AdapterConfig> AdapterPlugin::make_config() const { return std::make_unique<AdapterConfig>(); }
void AdapterPlugin::check(const AdapterConfig&, const EncoderInfo&, ConfigVisitor&) const {}
ArchPlugin::~ArchPlugin() = default;
void ArchPlugin::check(const VLMConfig&, const ModelConfig&, ConfigVisitor&) const {}

// A loaded library. Never unloaded: RTLD_NODELETE, and the handle itself is
// leaked on purpose so no dlclose runs during static destruction
// (libtorch-pitfalls.md section 8).
struct PluginLibrary {
  boost::dll::shared_library* handle = nullptr;
  std::string path;
};

struct Registry::Entry {
  std::string kind, name;
  size_t record = 0;
  std::shared_ptr<PluginLibrary> library;
  std::shared_ptr<const EncoderPlugin> encoder;
  std::shared_ptr<const AdapterPlugin> adapter;
  std::shared_ptr<const ArchPlugin> arch;
};

// ------------------------------------------------------------ Registrar

class Registrar::Impl {
 public:
  std::string kind, name;
  std::shared_ptr<spdlog::logger> logger;
  std::shared_ptr<const EncoderPlugin> encoder;
  std::shared_ptr<const AdapterPlugin> adapter;
  std::shared_ptr<const ArchPlugin> arch;
  std::vector<std::string> aliases;
  std::vector<std::string> errors;
  int added = 0;

  void expect_kind(const char* k) {
    ++added;
    if (kind != k)
      errors.push_back(fmt::format("registered a {} factory, but the plugin's kind is '{}'", k, kind));
  }
};

const std::string& Registrar::kind() const { return impl_->kind; }
const std::string& Registrar::name() const { return impl_->name; }
std::shared_ptr<spdlog::logger> Registrar::logger() const { return impl_->logger; }

void Registrar::add_encoder(std::shared_ptr<EncoderPlugin> plugin) {
  impl_->expect_kind("encoder");
  impl_->encoder = std::move(plugin);
}
void Registrar::add_adapter(std::shared_ptr<AdapterPlugin> plugin) {
  impl_->expect_kind("adapter");
  impl_->adapter = std::move(plugin);
}
void Registrar::add_arch(std::shared_ptr<ArchPlugin> plugin) {
  impl_->expect_kind("arch");
  impl_->arch = std::move(plugin);
}
void Registrar::add_alias(const std::string& alias) {
  static const std::regex ok("^[a-z][a-z0-9_]*$");
  if (!std::regex_match(alias, ok)) {
    impl_->errors.push_back(fmt::format("alias '{}' must match [a-z][a-z0-9_]*", alias));
    return;
  }
  impl_->aliases.push_back(alias);
}
void Registrar::fail(const std::string& message) noexcept {
  try {
    impl_->errors.push_back(message);
  } catch (...) {
  }
}

// ------------------------------------------------------------ Registry

Registry::Registry() = default;
Registry::~Registry() = default;

Registry& Registry::global() {
  static Registry* r = new Registry();  // process lifetime; never destroyed
  return *r;
}

std::string Registry::builtin_plugin_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&Registry::builtin_plugin_dir), &info) && info.dli_fname) {
    std::error_code ec;
    fs::path lib = fs::canonical(info.dli_fname, ec);
    if (!ec) return (lib.parent_path() / "forge" / "plugins").string();
  }
  return "";
}

void Registry::load_directories(const std::vector<std::string>& dirs) {
  for (const auto& d : dirs) {
    if (d.empty()) continue;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (std::find(searched_.begin(), searched_.end(), d) == searched_.end()) searched_.push_back(d);
    }
    std::error_code ec;
    if (!fs::is_directory(d, ec)) {
      log()->debug("plugin folder {} does not exist; skipped", d);
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(d, ec)) {
      std::string fn = e.path().filename().string();
      if (util::starts_with(fn, "libforge_") && util::ends_with(fn, ".so")) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) load_file(f.string(), d);
  }
}

namespace {

bool split_file_name(const std::string& file_name, std::string& kind, std::string& name) {
  static const std::regex re("^libforge_(arch|adapter|encoder)_([a-z][a-z0-9_]*)\\.so$");
  std::smatch m;
  if (!std::regex_match(file_name, m, re)) return false;
  kind = m[1];
  name = m[2];
  return true;
}

std::string major_minor(const std::string& v) {
  auto parts = util::split(v, '.');
  return parts.size() >= 2 ? parts[0] + "." + parts[1] : v;
}

std::string safe(const char* s) { return s ? std::string(s) : std::string(); }

// Library handles are never closed (RTLD_NODELETE; objects from a plugin may
// outlive every registry). They stay listed here for the whole process, so
// leak checkers see them as reachable rather than lost.
boost::dll::shared_library* keep_for_process(boost::dll::shared_library* lib) {
  static std::mutex mutex;
  static auto* const kept = new std::vector<boost::dll::shared_library*>();
  std::lock_guard<std::mutex> lock(mutex);
  kept->push_back(lib);
  return lib;
}

}  // namespace

const PluginRecord& Registry::load_file(const std::string& path, const std::string& search_dir) {
  std::error_code ec;
  fs::path canon = fs::weakly_canonical(path, ec);
  std::string key = ec ? path : canon.string();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = by_path_.find(key);
    if (it != by_path_.end()) return *records_[it->second];
  }

  auto rec = std::make_unique<PluginRecord>();
  rec->path = path;
  rec->search_dir = search_dir;
  std::string file_name = fs::path(path).filename().string();
  std::string file_kind, file_name_part;
  bool named_ok = split_file_name(file_name, file_kind, file_name_part);
  rec->kind = file_kind;
  rec->name = file_name_part;

  auto reject = [&](const std::string& why) -> const PluginRecord& {
    rec->ok = false;
    rec->error = why;
    log()->warn("plugin {} rejected: {}", path, why);
    std::lock_guard<std::mutex> lock(mutex_);
    records_.push_back(std::move(rec));
    by_path_[key] = records_.size() - 1;
    return *records_.back();
  };

  if (!named_ok) {
    return reject(fmt::format("file name must be libforge_<kind>_<name>.so with kind arch, adapter or encoder "
                              "and name [a-z][a-z0-9_]* (plugins/<kind>/<name>/ builds it)"));
  }

  // 1. It must be an ELF shared object before we hand it to the loader.
  {
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {0, 0, 0, 0};
    if (!in || !in.read(magic, 4) || std::string(magic, 4) != std::string("\x7f" "ELF", 4)) {
      return reject("not a shared library (no ELF header); remove it from the plugin folder");
    }
  }

  // 2. Load: RTLD_NOW so a missing symbol is found now, not mid-training;
  //    RTLD_LOCAL so plugins never bind to each other; RTLD_NODELETE so the
  //    code outlives any dlclose.
  boost::dll::shared_library* lib = keep_for_process(new boost::dll::shared_library());
  try {
    lib->load(boost::dll::fs::path(path),
              static_cast<boost::dll::load_mode::type>(RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE));
  } catch (const std::exception& e) {
    const char* dl = dlerror();
    std::string msg = e.what();
    // Boost wraps dlerror(); keep the loader's own words.
    auto pos = msg.find("dlerror system message: ");
    if (pos != std::string::npos) msg = msg.substr(pos + 24);
    if (!msg.empty() && msg.back() == ')') msg.pop_back();
    (void)dl;
    return reject(fmt::format("cannot be loaded: {}", msg));
  }

  // 3. The entry symbol.
  if (!lib->has(FORGE_PLUGIN_ENTRY_NAME)) {
    for (int abi = 0; abi < 100; ++abi) {
      std::string other = fmt::format("forge_plugin_v{}", abi);
      if (abi != kPluginAbi && lib->has(other)) {
        return reject(fmt::format("field abi_version: exports {} (plugin ABI {}) but this forge needs {} (ABI {}); "
                                  "rebuild the plugin against this SDK",
                                  other, abi, FORGE_PLUGIN_ENTRY_NAME, kPluginAbi));
      }
    }
    return reject(fmt::format("missing entry symbol {}: build it with forge_add_plugin() and FORGE_PLUGIN(...) "
                              "from <forge/plugin.h>",
                              FORGE_PLUGIN_ENTRY_NAME));
  }
  const PluginDescriptor* d = nullptr;
  try {
    auto entry = lib->get<const PluginDescriptor*()>(FORGE_PLUGIN_ENTRY_NAME);
    d = entry();
  } catch (const std::exception& e) {
    return reject(fmt::format("entry symbol {} failed: {}", FORGE_PLUGIN_ENTRY_NAME, e.what()));
  }
  if (!d) return reject(fmt::format("entry symbol {} returned no descriptor", FORGE_PLUGIN_ENTRY_NAME));

  // 4. Validate before trusting: field by field, expected vs got.
  rec->abi_version = d->abi_version;
  rec->sdk_version = safe(d->sdk_version);
  rec->torch_version = safe(d->torch_version);
  rec->cxx11_abi = d->cxx11_abi;
  rec->kind = safe(d->kind);
  rec->name = safe(d->name);
  rec->version = safe(d->version);
  rec->description = safe(d->description);
  if (d->abi_version != kPluginAbi)
    return reject(fmt::format("field abi_version: expected {}, got {}; rebuild the plugin against this SDK",
                              kPluginAbi, d->abi_version));
  {
    auto want = util::split(kSdkVersion, '.');
    auto got = util::split(rec->sdk_version, '.');
    // Same major; while 0.x the same minor, from 1.0 any minor up to the core's (a plugin built against a newer
    // SDK may call what this core lacks).
    auto minor_of = [](const std::vector<std::string>& v) {
      try {
        return std::stoi(v.at(1));
      } catch (...) {
        return -1;
      }
    };
    bool compatible = got.size() == 3 && got[0] == want[0] &&
                      (want[0] == "0" ? got[1] == want[1] : minor_of(got) >= 0 && minor_of(got) <= minor_of(want));
    if (!compatible)
      return reject(fmt::format("field sdk_version: expected {}.{}.x{}, got '{}'; rebuild the plugin against this SDK",
                                want[0], want[1], want[0] == "0" ? "" : " or an older minor", rec->sdk_version));
  }
  std::string core_torch = fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
  if (major_minor(rec->torch_version) != major_minor(core_torch))
    return reject(fmt::format("field torch_version: expected {}.x (the LibTorch forge runs with), got '{}'",
                              major_minor(core_torch), rec->torch_version));
  if (d->cxx11_abi != _GLIBCXX_USE_CXX11_ABI)
    return reject(fmt::format("field cxx11_abi: expected {}, got {}; LibTorch and forge use the C++11 ABI",
                              _GLIBCXX_USE_CXX11_ABI, d->cxx11_abi));
  if (rec->kind != "arch" && rec->kind != "adapter" && rec->kind != "encoder")
    return reject(fmt::format("field kind: expected arch, adapter or encoder, got '{}'", rec->kind));
  if (rec->kind != file_kind || rec->name != file_name_part)
    return reject(fmt::format("field kind/name: the file name says {}/{} but the descriptor says {}/{}; "
                              "the folder plugins/<kind>/<name>/ must match what it registers",
                              file_kind, file_name_part, rec->kind, rec->name));
  if (rec->version.empty()) return reject("field version: empty");
  if (!d->register_fn) return reject("field register_fn: null");

  std::string reg_key = rec->kind + "/" + rec->name;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(reg_key);
    if (it != entries_.end()) {
      PluginRecord& first = *records_[it->second->record];
      std::string msg = fmt::format("{} is provided by two plugin files: {} and {}; remove one of them", reg_key,
                                    first.path, path);
      conflicts_[reg_key] = msg;
      first.error = msg;
      rec->ok = false;
      rec->error = msg;
      log()->warn("plugin {} rejected: {}", path, msg);
      records_.push_back(std::move(rec));
      by_path_[key] = records_.size() - 1;
      return *records_.back();
    }
  }

  // 5. Registration, inside the plugin's own callback only.
  Registrar::Impl impl;
  impl.kind = rec->kind;
  impl.name = rec->name;
  impl.logger = named_logger(fmt::format("plugin.{}.{}", rec->kind, rec->name));
  Registrar registrar(&impl);
  int rc = d->register_fn(&registrar);
  if (rc != 0 || !impl.errors.empty()) {
    std::string why = impl.errors.empty() ? std::string("returned an error") : util::join(impl.errors, "; ");
    return reject(fmt::format("registration of {} failed: {}", reg_key, why));
  }
  if (impl.added != 1 || (!impl.encoder && !impl.adapter && !impl.arch))
    return reject(fmt::format("registration of {} must add exactly one {} factory (added {})", reg_key, rec->kind,
                              impl.added));

  auto library = std::shared_ptr<PluginLibrary>(new PluginLibrary{lib, path});
  auto entry = std::make_shared<Entry>();
  entry->kind = rec->kind;
  entry->name = rec->name;
  entry->library = library;
  entry->encoder = hold_with(library, impl.encoder);
  entry->adapter = hold_with(library, impl.adapter);
  entry->arch = hold_with(library, impl.arch);
  rec->aliases = impl.aliases;
  rec->ok = true;

  std::lock_guard<std::mutex> lock(mutex_);
  records_.push_back(std::move(rec));
  size_t index = records_.size() - 1;
  by_path_[key] = index;
  entry->record = index;
  entries_[reg_key] = entry;
  for (const auto& a : records_[index]->aliases) {
    std::string akey = records_[index]->kind + "/" + a;
    auto it = entries_.find(akey);
    if (it != entries_.end() && it->second != entry) {
      std::string msg = fmt::format("{} is provided by two plugin files: {} and {}; remove one of them", akey,
                                    records_[it->second->record]->path, path);
      conflicts_[akey] = msg;
      records_[index]->error = msg;
      if (auto& first = records_[it->second->record]->error; first.empty()) first = msg;
      log()->warn("{}", msg);
      continue;
    }
    entries_[akey] = entry;
  }
  log()->debug("plugin {} loaded from {}", reg_key, path);
  return *records_[index];
}

std::vector<PluginRecord> Registry::records() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<PluginRecord> out;
  for (const auto& r : records_) out.push_back(*r);
  return out;
}

std::vector<std::string> Registry::searched_dirs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return searched_;
}

std::vector<std::string> Registry::names(const std::string& kind) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (const auto& [k, e] : entries_) {
    if (e->kind == kind && !conflicts_.count(k)) out.push_back(k.substr(kind.size() + 1));
  }
  return out;
}

bool Registry::has(const std::string& kind, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string k = kind + "/" + name;
  return entries_.count(k) && !conflicts_.count(k);
}

const PluginRecord* Registry::find_record(const std::string& kind, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(kind + "/" + name);
  return it == entries_.end() ? nullptr : records_[it->second->record].get();
}

std::string Registry::describe_missing(const std::string& kind, const std::string& name) const {
  std::string k = kind + "/" + name;
  if (auto c = conflicts_.find(k); c != conflicts_.end()) return c->second;
  std::vector<std::string> known;
  for (const auto& [key, e] : entries_)
    if (e->kind == kind && !conflicts_.count(key)) known.push_back(key.substr(kind.size() + 1));
  std::string msg = fmt::format("no {} plugin named '{}'", kind, name);
  for (const auto& r : records_) {
    if (!r->ok && r->kind == kind && r->name == name) {
      return msg + fmt::format(": {} was found but rejected: {}", r->path, r->error);
    }
  }
  std::string hint = util::did_you_mean(name, known);
  if (!hint.empty()) msg += fmt::format("; did you mean '{}'?", hint);
  msg += fmt::format(". Registered {} plugins: {}.", kind, known.empty() ? std::string("none") : util::join(known, ", "));
  msg += fmt::format(" Searched: {}.", searched_.empty() ? std::string("no folders") : util::join(searched_, ", "));
  msg += fmt::format(" A plugin '{}' is the file libforge_{}_{}.so in one of those folders (or add a folder with "
                     "--plugin-path, FORGE_PLUGIN_PATH or [plugins] paths).",
                     name, kind, name);
  return msg;
}

const Registry::Entry& Registry::lookup(const std::string& kind, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string k = kind + "/" + name;
  auto it = entries_.find(k);
  if (it == entries_.end() || conflicts_.count(k)) throw PluginError(describe_missing(kind, name));
  return *it->second;
}

std::shared_ptr<const EncoderPlugin> Registry::encoder(const std::string& name) const {
  return lookup("encoder", name).encoder;
}
std::shared_ptr<const AdapterPlugin> Registry::adapter(const std::string& name) const {
  return lookup("adapter", name).adapter;
}
std::shared_ptr<const ArchPlugin> Registry::arch(const std::string& name) const { return lookup("arch", name).arch; }

std::shared_ptr<PluginLibrary> Registry::library(const std::string& kind, const std::string& name) const {
  return lookup(kind, name).library;
}

}  // namespace forge
