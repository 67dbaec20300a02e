// The runtime registry: discovers plugin files, validates and loads them,
// and answers lookups by kind and name.
//
// Rules (docs/abi.md): a plugin file is libforge_<kind>_<name>.so and must
// register exactly <kind>/<name>; its descriptor is checked field by field
// before its callback runs; a rejected file never stops the others; libraries
// are loaded RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE and never unloaded; every
// object a plugin creates holds its library.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "forge/export.h"
#include "forge/registry.h"

namespace forge {

// What is known about one plugin file, loaded or rejected.
struct FORGE_API PluginRecord {
  std::string path;        // as found
  std::string search_dir;  // the folder it was found in
  std::string kind, name;  // from the descriptor, or from the file name when unreadable
  std::string version, sdk_version, torch_version, description;
  int abi_version = -1;
  int cxx11_abi = -1;
  std::vector<std::string> aliases;
  bool ok = false;
  std::string error;  // the reason it was rejected (or a conflict found later)
};

// Keeps a loaded library alive; shared by everything the plugin creates.
struct PluginLibrary;

class FORGE_API Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The process-wide registry used by the forge host.
  static Registry& global();

  // The plugin folder of this installation: <dir of libforge_core.so>/forge/plugins.
  static std::string builtin_plugin_dir();

  // Scan folders in order for libforge_*.so files and load each one once.
  // Folders that do not exist are remembered as searched and skipped.
  void load_directories(const std::vector<std::string>& dirs);
  // Load one file; the returned record says whether it was accepted.
  const PluginRecord& load_file(const std::string& path, const std::string& search_dir = "");

  std::vector<PluginRecord> records() const;
  std::vector<std::string> searched_dirs() const;
  // Names (and aliases) registered for a kind, sorted.
  std::vector<std::string> names(const std::string& kind) const;
  bool has(const std::string& kind, const std::string& name) const;
  // The record of the plugin that registered kind/name (or alias); null if none.
  const PluginRecord* find_record(const std::string& kind, const std::string& name) const;

  // Lookups. Unknown names throw PluginError listing what is registered, the
  // folders searched and, when a file for that name was rejected, why.
  std::shared_ptr<const EncoderPlugin> encoder(const std::string& name) const;
  std::shared_ptr<const AdapterPlugin> adapter(const std::string& name) const;
  std::shared_ptr<const ArchPlugin> arch(const std::string& name) const;

  // The library behind kind/name, so core wrappers can tie an object's
  // lifetime to it (see hold()).
  std::shared_ptr<PluginLibrary> library(const std::string& kind, const std::string& name) const;
  // `obj` re-wrapped so that it keeps the plugin's library alive: the
  // library handle is released only after the object is destroyed.
  template <class T>
  std::shared_ptr<T> hold(const std::string& kind, const std::string& name, std::shared_ptr<T> obj) const {
    return hold_with(library(kind, name), std::move(obj));
  }
  template <class T>
  static std::shared_ptr<T> hold_with(std::shared_ptr<PluginLibrary> lib, std::shared_ptr<T> obj) {
    if (!obj || !lib) return obj;
    struct Holder {
      std::shared_ptr<PluginLibrary> library;  // declared first: destroyed last
      std::shared_ptr<T> object;
    };
    auto holder = std::make_shared<Holder>(Holder{std::move(lib), obj});
    return std::shared_ptr<T>(holder, obj.get());
  }

  struct Entry;  // one registered kind/name

 private:
  const Entry& lookup(const std::string& kind, const std::string& name) const;
  std::string describe_missing(const std::string& kind, const std::string& name) const;

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<PluginRecord>> records_;
  std::vector<std::string> searched_;
  std::map<std::string, std::shared_ptr<Entry>> entries_;  // "kind/name" (aliases too)
  std::map<std::string, std::string> conflicts_;           // "kind/name" -> message
  std::map<std::string, size_t> by_path_;                  // canonical path -> record index
};

}  // namespace forge
