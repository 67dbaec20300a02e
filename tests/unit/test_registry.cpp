// The plugin loader against good and deliberately broken plugin fixtures.
#include <dlfcn.h>

#include <fmt/format.h>

#include "forge/plugin.h"
#include "tests/unit/test_helpers.h"

using namespace forge;

namespace {

const PluginRecord* record(const std::vector<PluginRecord>& recs, const std::string& file_name) {
  for (const auto& r : recs)
    if (std::filesystem::path(r.path).filename() == file_name) return &r;
  return nullptr;
}

Registry& fixture_registry() {
  static Registry* r = [] {
    auto* reg = new Registry();
    reg->load_directories({FORGE_FIXTURE_PLUGIN_DIR});
    return reg;
  }();
  return *r;
}

}  // namespace

TEST_CASE("good fixtures of every kind load beside the bad ones", "[plugins]") {
  auto recs = fixture_registry().records();
  for (const char* f : {"libforge_adapter_fixture_good.so", "libforge_encoder_fixture_good.so",
                        "libforge_arch_fixture_good.so"}) {
    const auto* r = record(recs, f);
    REQUIRE(r);
    CHECK(r->ok);
    CHECK(r->error.empty());
    CHECK(r->abi_version == kPluginAbi);
  }
  const auto* a = record(recs, "libforge_adapter_fixture_good.so");
  CHECK(a->version == "1.2.3");
  CHECK(a->aliases == std::vector<std::string>{"fixture_good_alias"});
  CHECK(fixture_registry().has("adapter", "fixture_good"));
  CHECK(fixture_registry().has("adapter", "fixture_good_alias"));
  CHECK(fixture_registry().encoder("fixture_good") != nullptr);
  CHECK(fixture_registry().arch("fixture_good") != nullptr);
}

TEST_CASE("each bad fixture is rejected with its own message", "[plugins]") {
  auto recs = fixture_registry().records();
  auto reason = [&](const char* f) {
    const auto* r = record(recs, f);
    REQUIRE(r);
    CHECK_FALSE(r->ok);
    return r->error;
  };
  CHECK_THAT(reason("libforge_adapter_fixture_wrong_abi.so"),
             Catch::Contains("field abi_version: expected " + std::to_string(FORGE_PLUGIN_ABI) + ", got 999"));
  CHECK_THAT(reason("libforge_adapter_fixture_wrong_torch.so"),
             Catch::Contains("field torch_version") && Catch::Contains("1.13.1"));
  CHECK_THAT(reason("libforge_adapter_fixture_wrong_sdk.so"),
             Catch::Contains(fmt::format("field sdk_version: expected {}.{}.x, got '9.0.0'", FORGE_SDK_VERSION_MAJOR,
                                         FORGE_SDK_VERSION_MINOR)) &&
                 Catch::Contains("rebuild the plugin against this SDK"));
  CHECK_THAT(reason("libforge_adapter_fixture_wrong_cxxabi.so"),
             Catch::Contains("field cxx11_abi: expected 1, got 0"));
  CHECK_THAT(reason("libforge_adapter_fixture_misnamed.so"),
             Catch::Contains("file name says adapter/fixture_misnamed") && Catch::Contains("adapter/something_else"));
  CHECK_THAT(reason("libforge_adapter_fixture_missing_entry.so"), Catch::Contains("missing entry symbol " FORGE_PLUGIN_ENTRY_NAME));
  CHECK_THAT(reason("libforge_adapter_fixture_unresolved.so"),
             Catch::Contains("cannot be loaded") && Catch::Contains("forge_fixture_symbol_nobody_defines"));
  CHECK_THAT(reason("libforge_adapter_fixture_throws.so"),
             Catch::Contains("registration of adapter/fixture_throws failed") &&
                 Catch::Contains("fixture refuses to register"));
  CHECK_THAT(reason("libforge_adapter_fixture_not_elf.so"), Catch::Contains("not a shared library"));
}

TEST_CASE("a config that needs a rejected plugin fails with the loader's message", "[plugins]") {
  try {
    fixture_registry().adapter("fixture_wrong_abi");
    FAIL("expected a PluginError");
  } catch (const PluginError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("libforge_adapter_fixture_wrong_abi.so was found but rejected") &&
                                          Catch::Contains("expected " + std::to_string(FORGE_PLUGIN_ABI) + ", got 999"));
    CHECK(e.exit_code() == 2);
  }
}

TEST_CASE("unknown names list what is registered and the folders searched", "[plugins]") {
  try {
    fixture_registry().encoder("fixture_goood");
    FAIL("expected a PluginError");
  } catch (const PluginError& e) {
    std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("no encoder plugin named 'fixture_goood'") &&
                      Catch::Contains("did you mean 'fixture_good'") && Catch::Contains(FORGE_FIXTURE_PLUGIN_DIR) &&
                      Catch::Contains("libforge_encoder_fixture_goood.so"));
  }
}

TEST_CASE("a duplicate name from two files is an error naming both", "[plugins]") {
  Registry reg;
  reg.load_directories({FORGE_FIXTURE_PLUGIN_DIR, FORGE_FIXTURE_DUP_DIR});
  try {
    reg.adapter("fixture_good");
    FAIL("expected a PluginError");
  } catch (const PluginError& e) {
    std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("provided by two plugin files"));
    CHECK_THAT(m, Catch::Contains(std::string(FORGE_FIXTURE_PLUGIN_DIR) + "/libforge_adapter_fixture_good.so"));
    CHECK_THAT(m, Catch::Contains(std::string(FORGE_FIXTURE_DUP_DIR) + "/libforge_adapter_fixture_good.so"));
  }
  // The other plugins are unaffected.
  CHECK(reg.encoder("fixture_good") != nullptr);
}

TEST_CASE("loading the same file twice is not a duplicate", "[plugins]") {
  Registry reg;
  reg.load_directories({FORGE_FIXTURE_PLUGIN_DIR, FORGE_FIXTURE_PLUGIN_DIR});
  CHECK(reg.adapter("fixture_good") != nullptr);
}

TEST_CASE("same-named entry symbols resolve to their own library", "[plugins]") {
  // Both libraries are loaded RTLD_LOCAL by the registry; asking each handle
  // for the entry symbol must give that library's own descriptor.
  fixture_registry();
  using Entry = const PluginDescriptor* (*)();
  std::string dir = FORGE_FIXTURE_PLUGIN_DIR;
  void* a = dlopen((dir + "/libforge_adapter_fixture_good.so").c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  void* e = dlopen((dir + "/libforge_encoder_fixture_good.so").c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  REQUIRE(a);  // already loaded by the registry (RTLD_NOLOAD)
  REQUIRE(e);
  auto fa = reinterpret_cast<Entry>(dlsym(a, FORGE_PLUGIN_ENTRY_NAME));
  auto fe = reinterpret_cast<Entry>(dlsym(e, FORGE_PLUGIN_ENTRY_NAME));
  REQUIRE(fa);
  REQUIRE(fe);
  CHECK(fa != fe);
  CHECK(std::string(fa()->kind) == "adapter");
  CHECK(std::string(fe()->kind) == "encoder");
  // Nothing leaks into the global namespace.
  CHECK(dlsym(RTLD_DEFAULT, FORGE_PLUGIN_ENTRY_NAME) == nullptr);
}

TEST_CASE("plugins export only their entry symbol", "[plugins]") {
  std::string so = Registry::builtin_plugin_dir() + "/libforge_adapter_avgpool.so";
  auto r = forge::test::run("nm -D --defined-only " + so);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains(FORGE_PLUGIN_ENTRY_NAME));
  size_t lines = std::count(r.output.begin(), r.output.end(), '\n');
  CHECK(lines == 1);
}

TEST_CASE("a plugin-created object keeps working after lookups (library held)", "[plugins]") {
  auto& reg = fixture_registry();
  auto plugin = reg.adapter("fixture_good");
  auto cfg = make_adapter_config(reg, "fixture_good");
  BuildContext ctx{named_logger("test"), 1};
  auto adapter = reg.hold("adapter", "fixture_good", plugin->create(*cfg, 4, 6, ctx));
  plugin.reset();
  auto out = adapter->forward(torch::ones({2, 3, 4}));
  CHECK(out.sizes() == at::IntArrayRef({2, 3, 6}));
}
