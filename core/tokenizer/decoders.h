// Decoders of tokenizer.json: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and
// Sequence, each a step over the list of token strings (the library's decode_chain), whose results
// are joined.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <unicode/regex.h>

#include "core/tokenizer/json_file.h"

namespace forge::tok {

class Decoder {
 public:
  // Appends the steps of a "decoder" object (a Sequence is flattened).
  void load(const JsonFile& f, const json& d, const std::string& where);
  bool empty() const { return steps_.empty(); }
  // Only ByteLevel steps: the tokens' bytes, joined and decoded lossily.
  bool byte_level_only() const;
  // The text of the token strings (no decoder: the library joins them with spaces).
  std::string decode(std::vector<std::string> tokens) const;

 private:
  struct Step {
    enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
    std::string pattern, content;  // Replace; Metaspace's replacement in content
    std::shared_ptr<icu::RegexPattern> regex;
    char32_t strip = 0;  // Strip's character
    size_t start = 0, stop = 0;
    bool prepend = true;  // Metaspace: prepend_scheme is not "never"
  };
  std::vector<Step> steps_;
};

}  // namespace forge::tok
