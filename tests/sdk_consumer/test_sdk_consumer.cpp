// The SDK from outside: install forge into a temporary prefix, build an
// adapter plugin in its own folder with only find_package(Forge) and
// forge_add_plugin(), drop the .so into a plugin folder, and show that the
// unchanged installed forge lists it and uses it.
#include "tests/unit/test_helpers.h"

using forge::test::run;
using forge::test::TempDir;

TEST_CASE("an out-of-tree plugin builds against the installed SDK and is used by forge", "[sdk]") {
  TempDir tmp;
  const std::string prefix = tmp.str() + "/prefix";
  auto install = run("cmake --install " FORGE_BUILD_DIR " --prefix " + prefix);
  INFO(install.output);
  REQUIRE(install.code == 0);

  const std::string src = std::string(FORGE_SOURCE_DIR) + "/tests/sdk_consumer/scaled_linear";
  const std::string bld = tmp.str() + "/build";
  auto configure = run("cmake -S " + src + " -B " + bld + " -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=" +
                       prefix);
  INFO(configure.output);
  REQUIRE(configure.code == 0);
  auto build = run("cmake --build " + bld);
  INFO(build.output);
  REQUIRE(build.code == 0);

  const std::string plugins = tmp.str() + "/plugins";
  std::filesystem::create_directories(plugins);
  std::filesystem::copy_file(bld + "/libforge_adapter_scaled_linear.so", plugins + "/libforge_adapter_scaled_linear.so");

  const std::string forge = prefix + "/bin/forge";
  auto listed = run(forge + " plugins --plugin-path " + plugins);
  INFO(listed.output);
  CHECK(listed.code == 0);
  CHECK_THAT(listed.output, Catch::Matches("(.|\n)*adapter +scaled_linear +2\\.0\\.0 +ok +" + plugins + "(.|\n)*"));
  CHECK_THAT(listed.output, Catch::Contains(prefix + "/lib/forge/plugins/libforge_arch_mot.so"));

  std::string cfg = forge::test::tiny_vlm_toml("joint_decoder", "scaled_linear");
  cfg.replace(cfg.find("pool_heads = 4\n"), 15, "scale = 0.5\n");
  auto path = tmp.write("c.toml", cfg);
  auto used = run(forge + " check-model " + path + " --plugin-path " + plugins);
  INFO(used.output);
  CHECK(used.code == 0);
  CHECK_THAT(used.output, Catch::Contains("adapter scaled_linear") && Catch::Contains("scaled_linear: 24 -> 32 x 0.5"));
  auto bad = run(forge + " validate " + path + " --adapter.scale=-1 --plugin-path " + plugins);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("[adapter] scale: got -1.0; must be > 0"));
}
