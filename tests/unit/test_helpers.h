// Shared helpers for forge's tests.
#pragma once

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/config/loader.h"
#include "core/registry/registry.h"
#include "core/util/files.h"
#include "forge/logging.h"

namespace forge::test {

// A registry with the built-in plugins loaded (shared by a test binary).
inline Registry& builtin_registry() {
  static Registry* r = [] {
    auto* reg = new Registry();
    reg->load_directories({Registry::builtin_plugin_dir()});
    return reg;
  }();
  return *r;
}

// A fresh, empty temporary folder, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("forge-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { util::remove_tree(path_.string()); }
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::string write(const std::string& name, const std::string& text) const {
    auto p = path_ / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }

 private:
  std::filesystem::path path_;
};

// Runs a shell command; returns exit code and combined stdout+stderr.
struct CommandResult {
  int code = -1;
  std::string output;
};
inline CommandResult run(const std::string& cmd) {
  CommandResult r;
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The diagnostics of the ConfigError thrown by loading `text`.
inline std::vector<ConfigDiagnostic> config_errors(const std::string& text, const LoadOptions& opts = {}) {
  try {
    load_config_text(text, "test.toml", builtin_registry(), opts);
  } catch (const ConfigError& e) {
    return e.diagnostics();
  }
  return {};
}

// The error (not warning) about `key` among `d`, or null.
inline const ConfigDiagnostic* find_diag(const std::vector<ConfigDiagnostic>& d, const std::string& key) {
  for (const auto& x : d)
    if (x.key == key && !x.warning) return &x;
  return nullptr;
}

// The message of what `f` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// A minimal valid VLM config (tiny dims).
inline std::string tiny_vlm_toml(const std::string& arch = "joint_decoder", const std::string& adapter = "mlp_2layer") {
  return "[model]\ndim = 32\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nvocab_size = 64\nmax_seq_len = 64\n"
         "[vision_encoder]\ntype = \"random\"\nnum_tokens = 16\nfeature_dim = 24\n"
         "[adapter]\ntype = \"" + adapter + "\"\npool_heads = 4\n"
         "[vlm]\narch = \"" + arch + "\"\nmax_text_len = 12\n" +
         (arch == "cross_attention" ? "cross_attention_every_n_layers = 1\n" : "") +
         "[train]\nseq_len = 64\n";
}

#ifdef FORGE_BIN
// The commands of a Markdown tutorial's ```sh blocks, one per line, as a test
// runs them: /tmp/ becomes `scratch`/ and build/bin/forge the build's forge.
inline std::vector<std::string> doc_commands(const std::string& markdown, const std::string& scratch) {
  std::ifstream in(markdown);
  std::vector<std::string> commands;
  bool in_sh = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("```", 0) == 0) {
      in_sh = !in_sh && line == "```sh";
      continue;
    }
    if (!in_sh || line.empty()) continue;
    auto replace_all = [&](const std::string& from, const std::string& to) {
      for (size_t at = line.find(from); at != std::string::npos; at = line.find(from, at + to.size()))
        line.replace(at, from.size(), to);
    };
    replace_all("/tmp/", scratch + "/");  // first: the build's own path may be under /tmp
    replace_all("build/bin/forge", FORGE_BIN);
    commands.push_back(line);
  }
  return commands;
}
#endif

}  // namespace forge::test
