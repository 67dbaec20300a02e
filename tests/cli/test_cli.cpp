// The forge host as a user runs it: exit codes and messages.
#include "forge/version.h"
#include "tests/unit/test_helpers.h"

using forge::test::run;
using forge::test::TempDir;

namespace {
const std::string kForge = FORGE_BIN;
}

TEST_CASE("forge --version prints forge, SDK, ABI, torch and CUDA versions", "[cli]") {
  auto r = run(kForge + " --version");
  CHECK(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("forge " FORGE_SDK_VERSION_STRING) &&
                           Catch::Contains("plugin ABI " + std::to_string(FORGE_PLUGIN_ABI)) &&
                           Catch::Contains("LibTorch 2.11.0") && Catch::Contains("CUDA"));
}

TEST_CASE("forge --help and forge <command> --help", "[cli]") {
  auto r = run(kForge + " --help");
  CHECK(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("plugins") && Catch::Contains("validate") && Catch::Contains("Exit codes"));
  auto v = run(kForge + " validate --help");
  CHECK(v.code == 0);
  CHECK_THAT(v.output, Catch::Contains("--plugin-path"));
}

TEST_CASE("usage errors exit 2 without a stack trace", "[cli]") {
  auto r = run(kForge + " no-such-command");
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains("forge --help"));
  auto o = run(kForge + " plugins --model.dim=3");
  CHECK(o.code == 2);
  CHECK_THAT(o.output, Catch::Contains("apply only to commands that take a config"));
}

TEST_CASE("forge plugins lists fixture plugins with their verdicts", "[cli][plugins]") {
  auto r = run(kForge + " plugins --plugin-path " FORGE_FIXTURE_PLUGIN_DIR);
  CHECK(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("fixture_good") && Catch::Contains("1.2.3"));
  CHECK_THAT(r.output, Catch::Contains("field abi_version: expected " + std::to_string(FORGE_PLUGIN_ABI) + ", got 999"));
  CHECK_THAT(r.output, Catch::Contains("not a shared library"));
  CHECK_THAT(r.output, Catch::Contains("fixture refuses to register"));
  // The built-in plugins are listed too, after the fixture folder.
  CHECK_THAT(r.output, Catch::Contains("mlp_2layer") && Catch::Contains("cross_attention"));
  auto first = r.output.find(FORGE_FIXTURE_PLUGIN_DIR);
  auto builtin = r.output.find("lib/forge/plugins");
  CHECK(first < builtin);
}

TEST_CASE("FORGE_PLUGIN_PATH is searched after --plugin-path", "[cli][plugins]") {
  auto r = run("FORGE_PLUGIN_PATH=" FORGE_FIXTURE_DUP_DIR " " + kForge + " plugins --plugin-path " FORGE_FIXTURE_PLUGIN_DIR);
  CHECK(r.code == 0);
  auto a = r.output.find(std::string("  ") + FORGE_FIXTURE_PLUGIN_DIR + "\n");
  auto b = r.output.find(std::string("  ") + FORGE_FIXTURE_DUP_DIR + "\n");
  REQUIRE(a != std::string::npos);
  REQUIRE(b != std::string::npos);
  CHECK(a < b);
  CHECK_THAT(r.output, Catch::Contains("provided by two plugin files"));
}

TEST_CASE("forge validate prints the resolved config for a good config", "[cli][config]") {
  TempDir d;
  auto cfg = d.write("good.toml", forge::test::tiny_vlm_toml("cross_attention", "avgpool"));
  auto r = run(kForge + " validate " + cfg + " --model.dim=64 --log-level=warn");
  CHECK(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("[model]\ninit_from_hf = \"\"\ndim = 64") && Catch::Contains("arch = \"cross_attention\"") &&
                           Catch::Contains("cross_attention_every_n_layers = 1") && Catch::Contains("[optimizer]"));
  // What validate prints is itself a valid config that resolves the same.
  std::string printed = r.output.substr(r.output.find("[model]"));
  auto again = d.write("resolved.toml", printed);
  auto r2 = run(kForge + " validate " + again);
  CHECK(r2.code == 0);
  CHECK(r2.output.substr(r2.output.find("[model]")) == printed);
}

TEST_CASE("forge validate rejects a bad config with exit 2 and file:line:column", "[cli][config]") {
  TempDir d;
  auto cfg = d.write("bad.toml", "[model]\ndim = 32\nn_heads = 4\nrope_theta = -1.0\n");
  auto r = run(kForge + " validate " + cfg);
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains(cfg + ":4:14: error: [model] rope_theta: got -1.0; must be > 0"));
  CHECK_THAT(r.output, !Catch::Contains("terminate") && !Catch::Contains("Aborted"));
  auto missing = run(kForge + " validate " + d.str() + "/nope.toml");
  CHECK(missing.code == 2);
  CHECK_THAT(missing.output, Catch::Contains("config file not found"));
}

TEST_CASE("plugin folders named in the TOML are searched", "[cli][plugins]") {
  TempDir d;
  auto cfg = d.write("c.toml", std::string("[plugins]\npaths = [\"") + FORGE_FIXTURE_PLUGIN_DIR +
                                   "\"]\n[model]\ndim = 32\nn_layers = 1\nn_heads = 4\nvocab_size = 64\nmax_seq_len = "
                                   "64\n[vision_encoder]\ntype = \"fixture_good\"\n[adapter]\ntype = \"fixture_good\"\n"
                                   "fixture_scale = 2.0\n[vlm]\narch = \"fixture_good\"\nmax_text_len = 8\n[train]\n"
                                   "seq_len = 64\n");
  auto r = run(kForge + " validate " + cfg);
  CHECK(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("fixture_scale = 2.0"));
}

TEST_CASE("forge check-model builds each arch from configs/ and runs forward/backward", "[cli][model]") {
  for (const char* arch : {"joint_decoder", "cross_attention", "mot", "moma"}) {
    auto r = run(kForge + " check-model " FORGE_SOURCE_DIR "/configs/tiny_" + arch + ".toml");
    INFO(r.output);
    CHECK(r.code == 0);
    CHECK_THAT(r.output, Catch::Contains(std::string("arch ") + arch) && Catch::Contains("transformer.layers") &&
                             Catch::Contains("forward + backward on random data") && Catch::Contains("residual stream"));
  }
}

TEST_CASE("forge plugins: every built-in plugin loads ok", "[cli][plugins]") {
  auto r = run(kForge + " plugins");
  CHECK(r.code == 0);
  for (const char* p : {"encoder  random", "encoder  siglip", "encoder  clip", "adapter  mlp_2layer",
                        "adapter  linear", "adapter  avgpool", "adapter  attentional_pool", "arch     joint_decoder",
                        "arch     cross_attention", "arch     mot", "arch     moma"})
    CHECK_THAT(r.output, Catch::Contains(p));
  CHECK_THAT(r.output, Catch::Contains("also registered as: siglip2"));
  CHECK_THAT(r.output, Catch::Contains("11 plugin file(s): 11 ok, 0 rejected."));
}

TEST_CASE("docs/moma.md: every command runs", "[cli][docs][moma]") {
  forge::test::TempDir d;
  auto commands = forge::test::doc_commands(FORGE_SOURCE_DIR "/docs/moma.md", d.str());
  REQUIRE(commands.size() == 4);
  for (const auto& c : commands) {
    INFO(c);
    auto r = run("cd " FORGE_SOURCE_DIR " && " + c + " 2>&1");
    INFO(r.output);
    CHECK(r.code == 0);
  }
  CHECK(std::filesystem::exists(d.path() / "forge-moma" / "latest"));
  // And generation says why not.
  REQUIRE(run(kForge + " data sample --split heldout -n 1 --out " + d.str() + "/s").code == 0);
  auto g = run(kForge + " generate --checkpoint " + d.str() + "/forge-moma --image " + d.str() +
               "/s/heldout_000000.png 2>&1");
  CHECK(g.code == 2);
  CHECK_THAT(g.output, Catch::Contains("expert choice") && Catch::Contains("forge eval"));
}

TEST_CASE("docs/configuration.md is what forge config-reference prints", "[cli][docs]") {
  auto r = run("env -u FORGE_PLUGIN_PATH " + kForge + " config-reference 2>/dev/null");
  REQUIRE(r.code == 0);
  std::ifstream in(FORGE_SOURCE_DIR "/docs/configuration.md");
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INFO("regenerate it: build/bin/forge config-reference > docs/configuration.md");
  CHECK(doc == r.output);
}
