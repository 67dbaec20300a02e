// docs/pretrained.md is a tutorial: every command in it runs here, in order,
// on tiny random Hugging Face folders of the real layout (the Python fixtures'
// llm_chat and siglip) instead of the user's models.
#include <fstream>
#include <sstream>

#include "tests/unit/test_helpers.h"

using forge::test::TempDir;

namespace {

struct Block {
  std::string lang;  // "sh" or "python"
  std::string code;
};

// The fenced code blocks of a Markdown file, in order.
std::vector<Block> code_blocks(const std::string& path) {
  std::ifstream in(path);
  std::vector<Block> out;
  std::string line;
  Block* cur = nullptr;
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) {
      if (cur) {
        cur = nullptr;
      } else {
        out.push_back(Block{line.substr(3), ""});
        cur = &out.back();
      }
      continue;
    }
    if (cur) cur->code += line + "\n";
  }
  return out;
}

std::string data(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

}  // namespace

TEST_CASE("docs/pretrained.md: every command runs, from the HF folders to transformers' LLaVA", "[docs][pretrained]") {
  auto blocks = code_blocks(std::string(FORGE_SOURCE_DIR) + "/docs/pretrained.md");
  TempDir d;
  std::filesystem::create_directory_symlink(std::string(FORGE_SOURCE_DIR) + "/configs", d.path() / "configs");
  const std::string bin_dir = std::filesystem::path(FORGE_BIN).parent_path().string();
  // The tutorial's two folders are the fixtures; `forge` is the build's.
  const std::string env = "cd " + d.str() + " && export PATH=" + bin_dir + ":$PATH LLM=" + data("llm_chat") +
                          " TOWER=" + data("siglip") + " && ";
  int sh = 0, py = 0, exports = 0;
  for (const auto& b : blocks) {
    if (b.lang == "sh") {
      std::string script;
      std::istringstream lines(b.code);
      for (std::string l; std::getline(lines, l);) {
        if (l.rfind("export LLM=", 0) == 0 || l.rfind("export TOWER=", 0) == 0) {
          ++exports;  // the user's folders: set above to the fixtures
          continue;
        }
        script += l + "\n";
      }
      if (script.find_first_not_of(" \n") == std::string::npos) continue;
      const std::string file = d.write("block_" + std::to_string(sh) + ".sh", "set -euo pipefail\n" + script);
      auto r = forge::test::run(env + "bash " + file);
      INFO("```sh\n" << script << "```\n" << r.output);
      REQUIRE(r.code == 0);
      ++sh;
    } else if (b.lang == "python") {
      const std::string file = d.write("block_py_" + std::to_string(py) + ".py", b.code);
      auto r = forge::test::run(env + FORGE_PYTHON + " " + file);
      INFO("```python\n" << b.code << "```\n" << r.output);
      REQUIRE(r.code == 0);
      ++py;
    }
  }
  CHECK(exports == 2);
  CHECK(sh >= 5);  // validate, data sample, train, generate, export
  CHECK(py == 1);
  CHECK(std::filesystem::exists(d.path() / "exported" / "config.json"));
  CHECK(std::filesystem::exists(d.path() / "runs" / "stage1" / "metrics.jsonl"));
}
