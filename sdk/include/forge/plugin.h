// The plugin entry point.
//
// Every plugin source file set contains exactly one
//
//   FORGE_PLUGIN(register_fn, "one-line description")
//
// where `void register_fn(forge::Registrar&)` adds the plugin's factory.
// forge_add_plugin() supplies the kind, name and version as compile
// definitions (from the folder, plugins/<kind>/<name>/), and exports only the
// entry symbol forge_plugin_v<ABI>. Registration happens only when the loader
// calls the callback, never in static initialisers. Anything the callback
// throws is caught here and reported by the loader as a PluginError tagged
// with the plugin's name.
#pragma once

#include <cstdint>
#include <exception>

#include <torch/headeronly/version.h>

#include "forge/registry.h"
#include "forge/version.h"

namespace forge {

// Plain data returned by the entry symbol. The loader checks every field
// before it calls register_fn (docs/abi.md).
struct PluginDescriptor {
  int32_t abi_version;        // FORGE_PLUGIN_ABI, exact match
  const char* sdk_version;    // FORGE_SDK_VERSION_STRING the plugin was built with
  const char* torch_version;  // LibTorch "major.minor.patch" the plugin was built with
  int32_t cxx11_abi;          // _GLIBCXX_USE_CXX11_ABI the plugin was built with
  const char* kind;           // "arch" | "adapter" | "encoder"
  const char* name;           // registry name, [a-z][a-z0-9_]*
  const char* version;        // the plugin's own version
  const char* description;
  int (*register_fn)(Registrar* registrar) noexcept;  // 0 on success
};

namespace detail {
template <class Fn>
int invoke_register(Registrar* registrar, Fn fn) noexcept {
  try {
    fn(*registrar);
    return 0;
  } catch (const std::exception& e) {
    registrar->fail(e.what());
  } catch (...) {
    registrar->fail("unknown exception");
  }
  return 1;
}
}  // namespace detail

}  // namespace forge

#define FORGE_DETAIL_STR2(x) #x
#define FORGE_DETAIL_STR(x) FORGE_DETAIL_STR2(x)
#define FORGE_TORCH_VERSION_STRING \
  FORGE_DETAIL_STR(TORCH_VERSION_MAJOR) "." FORGE_DETAIL_STR(TORCH_VERSION_MINOR) "." FORGE_DETAIL_STR(TORCH_VERSION_PATCH)

// FORGE_PLUGIN_KIND, FORGE_PLUGIN_NAME and FORGE_PLUGIN_VERSION come from
// forge_add_plugin() (find_package(Forge)); a plugin built otherwise fails to
// compile here.
#define FORGE_PLUGIN(REGISTER_FN, DESCRIPTION)                                                     \
  namespace {                                                                                      \
  int forge_plugin_register_(::forge::Registrar* registrar) noexcept {                             \
    return ::forge::detail::invoke_register(registrar, REGISTER_FN);                               \
  }                                                                                                \
  }                                                                                                \
  extern "C" __attribute__((visibility("default"))) const ::forge::PluginDescriptor* FORGE_PLUGIN_ENTRY() { \
    static const ::forge::PluginDescriptor descriptor{                                             \
        FORGE_PLUGIN_ABI,  FORGE_SDK_VERSION_STRING, FORGE_TORCH_VERSION_STRING,                   \
        _GLIBCXX_USE_CXX11_ABI, FORGE_PLUGIN_KIND, FORGE_PLUGIN_NAME,                              \
        FORGE_PLUGIN_VERSION, DESCRIPTION,        &forge_plugin_register_};                        \
    return &descriptor;                                                                            \
  }
