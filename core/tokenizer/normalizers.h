// Normalizers of tokenizer.json: NFC, NFD, NFKC, NFKD, Replace (a string or a regex), Prepend, Strip
// and Sequence, with the library's alignments (which original character each output byte came
// from), since those decide the offsets.
#pragma once

#include <unicode/normalizer2.h>
#include <unicode/regex.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tokenizer/json_file.h"

namespace forge::tok {

// A [begin, end) byte span of the original text.
struct Span {
  uint32_t begin, end;
};

// One Unicode normalization form (see normalizers.cpp).
struct NormStep {
  const icu::Normalizer2* check = nullptr;      // isNormalized(): nothing to do
  const icu::Normalizer2* decompose = nullptr;  // NFD or NFKD: full decompositions
  const icu::Normalizer2* composer = nullptr;   // NFC: composePair()
  bool compose = false;                         // NFC, NFKC
};

class Normalizer {
 public:
  // Appends the steps of a "normalizer" object (a Sequence is flattened).
  void load(const JsonFile& f, const json& n, const std::string& where);
  bool empty() const { return steps_.empty(); }
  // The steps over `in`: false when they leave it as it is. Otherwise *out is the normalized
  // text and (*align)[i] the original span (offset by `base`) of the character byte i came from.
  bool run(std::string_view in, std::string* out, std::vector<Span>* align, uint32_t base) const;

 private:
  struct Step {
    enum class Kind { kUnicode, kReplace, kPrepend, kStrip } kind = Kind::kUnicode;
    NormStep uni;  // kUnicode
    // kReplace: a literal (regex == nullptr) or a regex; kPrepend: text is what is prepended.
    std::string pattern, text;
    std::shared_ptr<icu::RegexPattern> regex;
    // kStrip
    bool left = false, right = false;
  };
  std::vector<Step> steps_;
};

}  // namespace forge::tok
