// Pre-tokenizers of tokenizer.json: ByteLevel, Split, Digits, Metaspace, WhitespaceSplit and
// Sequence. They cut the pieces of text between added tokens into pre-tokens ("words") for the
// model, keeping track of where each byte came from in the original text.
#pragma once

#include <unicode/regex.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tokenizer/json_file.h"
#include "core/tokenizer/normalizers.h"
#include "core/tokenizer/pattern.h"
#include "core/tokenizer/unicode.h"

namespace forge::tok {

// A piece of the text after the added-token split and the normalizer: a view of the original
// text (align == nullptr: byte i is original byte base + i) or of a normalized copy (align[i]: the
// original span of the character byte i came from).
struct Segment {
  std::string_view text;
  const Span* align = nullptr;
  uint32_t base = 0;
  int32_t added = -1;  // index into the added tokens when this piece is one
  Span span{0, 0};     // original span of an added token
};

// A pre-token: bytes [begin, end) of a segment, after a space ByteLevel prepended (prefix), and
// whether ByteLevel has mapped it to its alphabet (the steps after it see mapped characters).
struct Piece {
  uint32_t seg;
  uint32_t begin, end;
  bool prefix = false;
  bool mapped = false;
};

// Per-call scratch of an encode (so that encode() is const and thread-safe).
struct PreScratch {
  std::deque<std::string> texts;  // normalized pieces, and pieces Metaspace rewrote
  std::deque<std::vector<Span>> aligns;
  std::vector<Segment> segments;
  std::vector<Piece> pieces, next;
  std::vector<MatchRange> matches;
  std::vector<std::pair<uint32_t, uint32_t>> kept;
  std::vector<std::unique_ptr<icu::RegexMatcher>> matchers;  // one per step, made on first use
  Utf16 u16;
  std::string word;
};

// The bytes of a piece (with the space ByteLevel prepended).
void piece_text(const Segment& seg, const Piece& p, std::string* bytes);

// The original span of byte `pos` of a segment's text.
inline Span span_at(const Segment& seg, uint32_t pos) {
  if (seg.align) return seg.align[pos];
  const auto [cb, ce] = char_around(seg.text, pos);
  return {seg.base + cb, seg.base + ce};
}

class PreTokenizer {
 public:
  // Appends the steps of a "pre_tokenizer" object (a Sequence is flattened).
  void load(const JsonFile& f, const json& p, const std::string& where);
  bool byte_level() const;  // has a ByteLevel step
  size_t size() const { return steps_.size(); }
  // Pre-tokens of segment `seg` into sc.pieces (Metaspace adds segments for the text it rewrites).
  void run(uint32_t seg, PreScratch& sc) const;

 private:
  struct Step {
    enum class Kind { kSplit, kDigits, kByteLevel, kMetaspace, kWhitespaceSplit } kind = Kind::kSplit;
    std::unique_ptr<icu::RegexPattern> regex;  // Split's pattern; ByteLevel's GPT-2 regex (use_regex)
    int fast = 0;                              // the regex is one of those matched by hand (FastRegex)
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel
    // Metaspace
    std::string replacement;
    enum class Prepend { kAlways, kFirst, kNever } prepend = Prepend::kAlways;
    bool split = true;
  };
  void split_piece(const Piece& p, size_t k, PreScratch& sc) const;
  void metaspace(const Piece& p, const Step& step, PreScratch& sc) const;
  std::vector<Step> steps_;
};

}  // namespace forge::tok
