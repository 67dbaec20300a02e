#include "fuzz/support.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/util/files.h"

namespace forge::fuzz {

namespace {
struct Scratch {
  std::string path;
  Scratch() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/forge-fuzz-XXXXXX";
    if (!mkdtemp(pattern.data())) {
      std::perror("forge fuzz: mkdtemp");
      std::abort();
    }
    path = pattern;
  }
  ~Scratch() { util::remove_tree(path); }
};
}  // namespace

const std::string& scratch_dir() {
  static Scratch scratch;
  return scratch.path;
}

std::string write_file(const std::string& name, std::string_view bytes) {
  std::filesystem::path p = std::filesystem::path(scratch_dir()) / name;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) violated("cannot write the scratch file " + p.string());
  return p.string();
}

std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts) {
  std::string_view all(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    size_t nul = all.find('\0');
    if (nul == std::string_view::npos) break;
    parts.push_back(all.substr(0, nul));
    all.remove_prefix(nul + 1);
  }
  parts.push_back(all);
  return parts;
}

std::string data_dir() {
  const char* env = std::getenv("FORGE_FUZZ_DATA");
  return env && *env ? env : FORGE_FUZZ_DATA_DIR;
}

void violated(const std::string& what) {
  std::fprintf(stderr, "forge fuzz: property violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace forge::fuzz
