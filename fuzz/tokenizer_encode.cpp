// Fuzz target: encoding arbitrary bytes with each tokenizer model forge
// reads (byte-level BPE, SentencePiece-style BPE with byte fallback,
// Unigram, the variants' normalizers and pre-tokenizers) and forge's
// byte-level tokenizer. The tokenizers are the generated ones in
// <data>/tokenizers/*/tokenizer.json (fuzz/make_seeds.py).
// Input: any bytes (not necessarily UTF-8). Properties: check_tokenizer's,
// and the byte-level tokenizer decodes its encoding to the input exactly.
#include <algorithm>
#include <filesystem>
#include <memory>
#include <vector>

#include "fuzz/support.h"
#include "fuzz/tokenizer_check.h"

using namespace forge;

namespace {
std::vector<std::shared_ptr<Tokenizer>> load_all() {
  std::vector<std::string> paths;
  std::string root = fuzz::data_dir() + "/tokenizers";
  if (std::filesystem::is_directory(root))
    for (const auto& entry : std::filesystem::directory_iterator(root))
      if (std::filesystem::exists(entry.path() / "tokenizer.json")) paths.push_back((entry.path() / "tokenizer.json").string());
  if (paths.empty()) fuzz::violated("no tokenizers under " + root + "; run fuzz/make_seeds.py (scripts/fuzz.sh does)");
  std::sort(paths.begin(), paths.end());
  std::vector<std::shared_ptr<Tokenizer>> all;
  for (const auto& p : paths) all.push_back(load_hf_tokenizer(p));
  all.push_back(std::make_shared<ByteTokenizer>());
  return all;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tokenizers = load_all();
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const auto& tok : tokenizers) fuzz::expect_forge_errors([&] { fuzz::check_tokenizer(*tok, text, text); });
  ByteTokenizer bytes;
  if (bytes.decode(bytes.encode(std::string(text))) != text) fuzz::violated("byte-level round trip lost bytes");
  return 0;
}
