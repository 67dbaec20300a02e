// Fuzz target: loading a Hugging Face tokenizer.json (and the
// tokenizer_config.json beside it), then using it.
// Input: tokenizer.json, then (NUL-separated, optional) a text to encode and
// tokenizer_config.json. Properties: load_hf_tokenizer accepts the file or
// throws a forge error; an accepted tokenizer keeps check_tokenizer's rules.
#include <filesystem>

#include "fuzz/support.h"
#include "fuzz/tokenizer_check.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parts = fuzz::split_parts(data, size, 3);
  std::string path = fuzz::write_file("tok/tokenizer.json", parts[0]);
  std::string config = fuzz::scratch_dir() + "/tok/tokenizer_config.json";
  if (parts.size() > 2) {
    fuzz::write_file("tok/tokenizer_config.json", parts[2]);
  } else {
    std::filesystem::remove(config);
  }
  std::string_view text = parts.size() > 1 ? parts[1] : std::string_view("Hello world, 123 ünïcode 日本 👍");
  fuzz::expect_forge_errors([&] {
    auto tok = load_hf_tokenizer(path);
    fuzz::check_tokenizer(*tok, text, text);
  });
  return 0;
}
