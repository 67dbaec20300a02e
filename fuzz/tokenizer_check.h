// The properties every tokenizer's encode and decode must keep, shared by
// the two tokenizer fuzz targets.
#pragma once

#include <string>
#include <string_view>

#include "core/data/tokenizer.h"
#include "fuzz/support.h"

namespace forge::fuzz {

// Encodes `text` (ids in [0, vocab), offsets inside the text and in order),
// decodes the ids, and decodes `raw` read as ids modulo the vocabulary
// (partial characters, specials, anything).
inline void check_tokenizer(const Tokenizer& tok, std::string_view text, std::string_view raw) {
  std::vector<std::pair<size_t, size_t>> offsets;
  std::vector<int64_t> ids = tok.encode(std::string(text), &offsets);
  if (offsets.size() != ids.size()) violated(tok.describe() + ": one offset per id expected");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= tok.vocab_size()) violated(tok.describe() + ": an id outside the vocabulary");
    auto [b, e] = offsets[i];
    if (b > e || e > text.size()) violated(tok.describe() + ": an offset outside the text");
  }
  std::vector<int64_t> again = tok.encode(std::string(text));
  if (again != ids) violated(tok.describe() + ": encoding depends on whether offsets are asked for");
  (void)tok.decode(ids);
  std::vector<int64_t> arbitrary;
  for (size_t i = 0; i + 1 < raw.size() && arbitrary.size() < 256; i += 2) {
    uint32_t v = static_cast<uint8_t>(raw[i]) | (static_cast<uint32_t>(static_cast<uint8_t>(raw[i + 1])) << 8);
    arbitrary.push_back(static_cast<int64_t>(v % static_cast<uint32_t>(tok.vocab_size())));
  }
  (void)tok.decode(arbitrary);
}

}  // namespace forge::fuzz
