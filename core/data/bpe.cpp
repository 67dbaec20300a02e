// Hugging Face tokenizer.json for byte-level BPE (GPT-2, Llama-3 and the many models built the same
// way), with the ids and offsets of the Python `tokenizers` package (checked against 0.23 by
// tests/data/test_tokenizer.cpp on fixtures from tests/fixtures/tokenizer_fixtures.py).
//
// One encode() runs the steps of the library's TokenizerImpl::encode_single_sequence:
//   1. added tokens that are not `normalized` are cut out of the raw text (leftmost-longest match,
//      then single_word / lstrip / rstrip); the other pieces are normalized (NFC/NFD/NFKC/NFKD)
//      and `normalized` added tokens are cut out of the normalized text;
//   2. the pre-tokenizer splits the remaining pieces: Split (an Oniguruma regex, run by ICU's
//      engine, or a literal; every split behaviour and invert), Digits, ByteLevel (prefix space,
//      GPT-2 regex), or a Sequence of them;
//   3. BPE merges each pre-token, lowest rank first (ignore_merges: a pre-token that is a whole
//      vocab entry is taken as it is);
//   4. offsets go back to the original text through the normalizer's alignment, and are trimmed
//      of whitespace when the post-processor asks for it (ByteLevel / RobertaProcessing with
//      trim_offsets), as the library does even without special tokens.
//
// ByteLevel maps every byte to one character of its alphabet ("Ġ" is the space), so the mapped
// string and the raw bytes correspond one to one. forge therefore runs BPE on raw bytes and
// converts the vocab instead ("Ġthe" is the key " the"): no per-call mapping, and offsets are byte
// arithmetic. The GPT-2 and Llama-3 regexes are matched by hand (ICU's backtracking engine would
// take most of the time); every other pattern goes to ICU.
//
// Offsets are [begin, end) byte spans in the original UTF-8 text. A token that holds part of a
// multi-byte character (byte-level BPE can split one) gets the span of the whole character: that is
// what the library reports, its alignments being per character. Normalizers run the library's own
// algorithm (unicode-normalization-alignments) on ICU's Unicode data, so the text and the
// alignments (a composed character takes the span of its first original character, a decomposed
// one shares it) are the library's too; only characters assigned after Unicode 9 (the library's
// tables) can normalize differently.
//
// Bytes that are not valid UTF-8 are encoded as bytes (the regexes see U+FFFD there); decode()
// turns invalid UTF-8 into U+FFFD per maximal ill-formed subsequence, as Rust's from_utf8_lossy
// (and Python's errors="replace") do.
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/data/tokenizer.h"
#include "forge/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge {

namespace {

// ------------------------------------------------------------------------------------------ UTF-8

constexpr char32_t kIllFormed = 0x110000;  // next_char's code point for ill-formed bytes

// The character at s[i] (i < s.size()): its length in bytes, and its code point in *cp. Ill-formed
// bytes make one "character" as long as their maximal subpart (at least 1 byte), with *cp =
// kIllFormed: exactly what one U+FFFD replaces in Rust's from_utf8_lossy and Python's decode.
inline size_t next_char(std::string_view s, size_t i, char32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char b0 = p[i];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  char32_t c;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    c = b0 & 0x0F;
    if (b0 == 0xE0)
      lo = 0xA0;  // no overlong forms
    else if (b0 == 0xED)
      hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    c = b0 & 0x07;
    if (b0 == 0xF0)
      lo = 0x90;
    else if (b0 == 0xF4)
      hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *cp = kIllFormed;
    return 1;
  }
  size_t k = 1;
  for (; k <= need && i + k < s.size(); ++k) {
    const unsigned char b = p[i + k];
    if (b < lo || b > hi) break;
    lo = 0x80;
    hi = 0xBF;
    c = (c << 6) | (b & 0x3F);
  }
  if (k <= need) {
    *cp = kIllFormed;
    return k;
  }
  *cp = c;
  return need + 1;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Rust's String::from_utf8_lossy: the ByteLevel decoder's last step.
std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    char32_t c;
    const size_t n = next_char(bytes, i, &c);
    if (c == kIllFormed)
      out += "\xEF\xBF\xBD";
    else
      out.append(bytes.data() + i, n);
    i += n;
  }
  return out;
}

// Whitespace as Rust's char::is_whitespace and the regex crate's \s: the White_Space property.
bool is_space(char32_t c) { return c != kIllFormed && u_isUWhiteSpace(static_cast<UChar32>(c)); }

// The regex crate's Unicode \w (HF's single_word test).
bool is_word_char(char32_t c) {
  if (c == kIllFormed) return false;
  const auto u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

// Rust's char::is_numeric (HF's Digits): general categories Nd, Nl, No.
bool is_numeric(UChar32 c) { return (U_GET_GC_MASK(c) & (U_GC_ND_MASK | U_GC_NL_MASK | U_GC_NO_MASK)) != 0; }

// Start of the character that ends just before s[end] (end > 0).
size_t prev_char_start(std::string_view s, size_t end) {
  for (size_t back = 1; back <= 4 && back <= end; ++back) {
    const auto b = static_cast<unsigned char>(s[end - back]);
    if ((b & 0xC0) != 0x80 || back == end) {
      char32_t c;
      const size_t start = end - back;
      if (start + next_char(s, start, &c) == end) return start;
      if ((b & 0xC0) != 0x80) break;
    }
  }
  return end - 1;
}

// The span of the character that holds byte `pos` of `s`.
std::pair<uint32_t, uint32_t> char_around(std::string_view s, size_t pos) {
  for (size_t back = 0; back < 4 && back <= pos; ++back) {
    const auto b = static_cast<unsigned char>(s[pos - back]);
    if ((b & 0xC0) != 0x80) {
      char32_t c;
      const size_t start = pos - back;
      const size_t n = next_char(s, start, &c);
      if (start + n > pos) return {static_cast<uint32_t>(start), static_cast<uint32_t>(start + n)};
      break;
    }
  }
  return {static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + 1)};  // a stray continuation byte
}

// Characters at the start (or end) of a token string that the ByteLevel post-processor trims off
// its offsets: "Ġ" (the byte-level space) and whitespace.
size_t count_spaces(std::string_view token, bool leading) {
  size_t n = 0;
  if (leading) {
    for (size_t i = 0; i < token.size(); ++n) {
      char32_t c;
      const size_t len = next_char(token, i, &c);
      if (!(c == 0x120 || is_space(c))) break;
      i += len;
    }
  } else {
    for (size_t e = token.size(); e > 0; ++n) {
      const size_t p = prev_char_start(token, e);
      char32_t c;
      next_char(token, p, &c);
      if (!(c == 0x120 || is_space(c))) break;
      e = p;
    }
  }
  return n;
}

// -------------------------------------------------------------------------- ByteLevel alphabet

// GPT-2's bytes_to_unicode: printable Latin-1 bytes are themselves, the other 68 bytes become
// U+0100.. in byte order, so every byte is one visible character (all below U+0144).
struct ByteAlphabet {
  static constexpr char32_t kEnd = 0x144;
  std::array<UChar, 256> to_cp{};
  std::array<int16_t, kEnd> to_byte{};
  ByteAlphabet() {
    to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool kept = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = static_cast<UChar>(kept ? b : 256 + extra++);
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// The raw bytes a ByteLevel token string stands for; false when a character is outside the
// alphabet (the ByteLevel decoder then keeps the token's own UTF-8, and BPE can never produce it).
bool unmap_bytes(std::string_view token, std::string* out) {
  const ByteAlphabet& a = alphabet();
  out->clear();
  for (size_t i = 0; i < token.size();) {
    char32_t c;
    i += next_char(token, i, &c);
    if (c >= ByteAlphabet::kEnd || a.to_byte[c] < 0) return false;
    out->push_back(static_cast<char>(a.to_byte[c]));
  }
  return true;
}

const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";

// ------------------------------------------------------------------- the two common regexes

// One run of a pattern over a piece, as HF's Pattern::find_matches: ordered ranges covering it.
struct MatchRange {
  uint32_t begin, end;
  bool match;
};

// ICU's backtracking engine is most of the time of an encode. The GPT-2 and the Llama-3 patterns
// (nearly every byte-level BPE model uses one of them) are simple enough to match by hand: one
// pass over the characters, with the alternatives in the regex's order. Anything else, and text
// that ByteLevel has already mapped, goes to ICU. test_tokenizer.cpp checks both ways agree.
enum class FastRegex { kNone, kGpt2, kLlama3 };

enum CharClass : uint8_t { kOther, kLetter, kNumber, kSpace };  // [^\s\p{L}\p{N}], \p{L}, \p{N}, \s

CharClass classify(char32_t c) {
  static const std::array<uint8_t, 128> ascii = [] {
    std::array<uint8_t, 128> t{};
    for (int a = 0; a < 128; ++a) {
      if (u_isUWhiteSpace(a))
        t[a] = kSpace;
      else if (U_GET_GC_MASK(a) & U_GC_L_MASK)
        t[a] = kLetter;
      else if (U_GET_GC_MASK(a) & U_GC_N_MASK)
        t[a] = kNumber;
      else
        t[a] = kOther;
    }
    return t;
  }();
  if (c < 128) return static_cast<CharClass>(ascii[c]);
  if (c == kIllFormed) return kOther;  // U+FFFD for the regexes
  const auto u = static_cast<UChar32>(c);
  if (u_isUWhiteSpace(u)) return kSpace;
  const uint32_t gc = U_GET_GC_MASK(u);
  if (gc & U_GC_L_MASK) return kLetter;
  if (gc & U_GC_N_MASK) return kNumber;
  return kOther;
}

// Matches of the GPT-2 or Llama-3 pattern in `text`, as byte ranges (they cover it: every character
// starts some alternative).
void fast_matches(FastRegex which, std::string_view text, std::vector<MatchRange>* out) {
  thread_local std::vector<char32_t> cps;
  thread_local std::vector<uint8_t> cls;
  thread_local std::vector<uint32_t> pos;
  cps.clear();
  cls.clear();
  pos.clear();
  for (size_t i = 0; i < text.size();) {
    char32_t c;
    const size_t n = next_char(text, i, &c);
    cps.push_back(c);
    cls.push_back(classify(c));
    pos.push_back(static_cast<uint32_t>(i));
    i += n;
  }
  pos.push_back(static_cast<uint32_t>(text.size()));
  const size_t m = cps.size();
  const bool llama = which == FastRegex::kLlama3;
  auto run = [&](size_t i, uint8_t k) {
    while (i < m && cls[i] == k) ++i;
    return i;
  };
  auto is_crlf = [&](size_t i) { return cps[i] == '\r' || cps[i] == '\n'; };
  // 's|'t|'re|'ve|'m|'ll|'d (Llama-3: case-insensitive, where "ſ" folds to "s"): the end, or 0.
  auto contraction = [&](size_t i) -> size_t {
    auto is = [&](size_t j, char lower) {
      if (j >= m) return false;
      const char32_t c = cps[j];
      if (c == static_cast<char32_t>(lower)) return true;
      if (!llama) return false;
      return c == static_cast<char32_t>(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
    };
    if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return i + 2;
    if ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) || (is(i + 1, 'l') && is(i + 2, 'l')))
      return i + 3;
    return 0;
  };
  // \s+(?!\S)|\s+ from a whitespace character: all of the run at the end of the text, else all but
  // its last character (which goes with what follows), else the one character.
  auto spaces = [&](size_t i) {
    const size_t j = run(i, kSpace);
    return (j == m || j - 1 == i) ? j : j - 1;
  };
  out->clear();
  for (size_t i = 0; i < m;) {
    const char32_t c = cps[i];
    const uint8_t k = cls[i];
    size_t e = c == '\'' ? contraction(i) : 0;
    if (e != 0) {
      // a contraction
    } else if (!llama) {
      if (k != kSpace)
        e = run(i, k);  // ?\p{L}+, ?\p{N}+, ?[^\s\p{L}\p{N}]+
      else if (c == ' ' && i + 1 < m && cls[i + 1] != kSpace)
        e = run(i + 1, cls[i + 1]);  // ... with the space
      else
        e = spaces(i);
    } else if (k == kLetter) {
      e = run(i, kLetter);  // [^\r\n\p{L}\p{N}]?\p{L}+
    } else if (k != kNumber && !is_crlf(i) && i + 1 < m && cls[i + 1] == kLetter) {
      e = run(i + 1, kLetter);
    } else if (k == kNumber) {
      e = std::min(run(i, kNumber), i + 3);  // \p{N}{1,3}
    } else if (k == kOther || (c == ' ' && i + 1 < m && cls[i + 1] == kOther)) {
      e = run(k == kOther ? i : i + 1, kOther);  //  ?[^\s\p{L}\p{N}]+[\r\n]*
      while (e < m && is_crlf(e)) ++e;
    } else {
      const size_t j = run(i, kSpace);  // \s*[\r\n]+
      size_t last = j;
      for (size_t t = i; t < j; ++t)
        if (is_crlf(t)) last = t;
      e = last < j ? last + 1 : spaces(i);
    }
    out->push_back({pos[i], pos[e], true});
    i = e;
  }
}

// --------------------------------------------------------------------------------------- pieces

struct Span {
  uint32_t begin, end;
};

// A piece of the text after the added-token split and the normalizer: a view of the original
// text (align == nullptr: byte i is original byte base + i) or of a normalized copy (align[i]: the
// original span of the character byte i came from).
struct Segment {
  std::string_view text;
  const Span* align = nullptr;
  uint32_t base = 0;
  int32_t added = -1;  // index into added_ when this piece is an added token
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

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// NormalizedString::split: which ranges a behaviour keeps (empty ones are dropped by the caller).
void apply_behavior(const std::vector<MatchRange>& m, Behavior behavior,
                    std::vector<std::pair<uint32_t, uint32_t>>* out) {
  out->clear();
  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& r : m) out->emplace_back(r.begin, r.end);
      break;
    case Behavior::kRemoved:
      for (const auto& r : m)
        if (!r.match) out->emplace_back(r.begin, r.end);
      break;
    case Behavior::kContiguous: {
      bool previous = false;
      for (const auto& r : m) {
        if (r.match == previous && !out->empty())
          out->back().second = r.end;
        else
          out->emplace_back(r.begin, r.end);
        previous = r.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous = false;
      for (const auto& r : m) {
        if (r.match && !previous && !out->empty())
          out->back().second = r.end;
        else
          out->emplace_back(r.begin, r.end);
        previous = r.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->match && !previous && !out->empty())
          out->back().first = it->begin;
        else
          out->emplace_back(it->begin, it->end);
        previous = it->match;
      }
      std::reverse(out->begin(), out->end());
      break;
    }
  }
}

struct PreStep {
  enum class Kind { kSplit, kDigits, kByteLevel } kind = Kind::kSplit;
  std::unique_ptr<icu::RegexPattern> regex;  // Split's pattern; ByteLevel's GPT-2 regex (use_regex)
  FastRegex fast = FastRegex::kNone;         // the regex is one of those matched by hand
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
};

// Added-token matcher: a byte trie, scanned leftmost-longest like the library's Aho-Corasick.
class Trie {
 public:
  void add(std::string_view key, int32_t value) {
    if (key.empty()) return;
    int32_t node = 0;
    for (unsigned char b : key) {
      int32_t child = find(node, b);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].next.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    nodes_[node].value = value;
    first_[static_cast<unsigned char>(key[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }
  // The longest key at s[pos..]: (length, value); value -1 when none.
  std::pair<size_t, int32_t> longest_at(std::string_view s, size_t pos) const {
    if (!first_[static_cast<unsigned char>(s[pos])]) return {0, -1};
    std::pair<size_t, int32_t> best{0, -1};
    int32_t node = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      node = find(node, static_cast<unsigned char>(s[i]));
      if (node < 0) break;
      if (nodes_[node].value >= 0) best = {i + 1 - pos, nodes_[node].value};
    }
    return best;
  }

 private:
  struct Node {
    int32_t value = -1;
    std::vector<std::pair<unsigned char, int32_t>> next;
  };
  int32_t find(int32_t node, unsigned char b) const {
    for (const auto& [c, child] : nodes_[node].next)
      if (c == b) return child;
    return -1;
  }
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

// ------------------------------------------------------------------------------- normalization

// One Unicode normalizer. ICU gives the data; the algorithm is the library's own
// (unicode-normalization-alignments), because its alignments decide the offsets: every output
// character carries a "change" (0: replaces the next original character, +1: inserted after it,
// -n: replaces it and removes n more), which NormalizedString::transform turns into spans.
struct NormStep {
  const icu::Normalizer2* check = nullptr;      // isNormalized(): nothing to do
  const icu::Normalizer2* decompose = nullptr;  // NFD or NFKD: full decompositions
  const icu::Normalizer2* composer = nullptr;   // NFC: composePair()
  bool compose = false;                         // NFC, NFKC
};

struct Changed {
  char32_t c;
  int32_t change;
  uint8_t ccc;
};

// Decompositions (canonical order) and, for NFC / NFKC, Recompositions of the Rust crate.
std::vector<Changed> normalize_chars(std::string_view text, const NormStep& step) {
  std::vector<Changed> buf;
  size_t ready = 0;  // buf[ready..] still waits for canonical ordering
  auto sort_pending = [&] {
    std::stable_sort(buf.begin() + static_cast<std::ptrdiff_t>(ready), buf.end(),
                     [](const Changed& a, const Changed& b) { return a.ccc < b.ccc; });
    ready = buf.size();
  };
  auto push = [&](char32_t ch, bool first) {
    const auto ccc = static_cast<uint8_t>(u_getCombiningClass(static_cast<UChar32>(ch)));
    if (ccc == 0) sort_pending();
    buf.push_back({ch, first ? 0 : 1, ccc});
  };
  icu::UnicodeString d;
  for (size_t i = 0; i < text.size();) {
    char32_t c;
    i += next_char(text, i, &c);
    if (c == kIllFormed) c = 0xFFFD;
    if (step.decompose->getDecomposition(static_cast<UChar32>(c), d)) {
      bool first = true;
      for (int32_t k = 0; k < d.length();) {
        const UChar32 x = d.char32At(k);
        push(static_cast<char32_t>(x), first);
        first = false;
        k += U16_LENGTH(x);
      }
    } else {
      push(c, true);
    }
  }
  sort_pending();
  if (!step.compose) return buf;

  std::vector<Changed> out, pending;
  out.reserve(buf.size());
  bool has_composee = false, blocked_any = false;
  Changed composee{};
  uint8_t last_ccc = 0;
  auto compose = [&](char32_t a, char32_t b) -> int32_t {
    return step.composer->composePair(static_cast<UChar32>(a), static_cast<UChar32>(b));
  };
  for (const Changed& ch : buf) {
    if (!has_composee) {
      if (ch.ccc != 0) {
        out.push_back(ch);
        continue;
      }
      composee = ch;
      has_composee = true;
      continue;
    }
    if (!blocked_any) {
      const int32_t r = compose(composee.c, ch.c);
      if (r >= 0) {
        composee = {static_cast<char32_t>(r), composee.change + ch.change - 1, 0};
        continue;
      }
      if (ch.ccc == 0) {
        out.push_back(composee);
        composee = ch;
        continue;
      }
      pending.push_back(ch);
      last_ccc = ch.ccc;
      blocked_any = true;
      continue;
    }
    if (last_ccc >= ch.ccc) {  // blocked from the composee
      if (ch.ccc == 0) {
        out.push_back(composee);
        out.insert(out.end(), pending.begin(), pending.end());
        pending.clear();
        composee = ch;
        blocked_any = false;
        continue;
      }
      pending.push_back(ch);
      last_ccc = ch.ccc;
      continue;
    }
    const int32_t r = compose(composee.c, ch.c);
    if (r >= 0) {
      composee = {static_cast<char32_t>(r), composee.change + ch.change - 1, 0};
      continue;
    }
    pending.push_back(ch);
    last_ccc = ch.ccc;
  }
  if (has_composee) out.push_back(composee);
  out.insert(out.end(), pending.begin(), pending.end());
  return out;
}

// NormalizedString::transform: the new text, each character aligned to the original character it
// replaces (change <= 0) or to the one before it (inserted).
void unicode_normalize(std::string_view text, const std::vector<Span>& align, const NormStep& step, std::string* out,
                       std::vector<Span>* out_align) {
  const std::vector<Changed> chars = normalize_chars(text, step);
  out->clear();
  out_align->clear();
  size_t offset = 0;  // in `text`
  for (const Changed& ch : chars) {
    Span a{0, 0};
    if (ch.change > 0) {
      if (offset >= 1) a = align[offset - 1];
    } else if (!align.empty()) {
      a = align[std::min(offset, align.size() - 1)];
    }
    char32_t ignored;
    if (ch.change <= 0 && offset < text.size()) offset += next_char(text, offset, &ignored);
    for (int32_t k = 0; k < -ch.change && offset < text.size(); ++k) offset += next_char(text, offset, &ignored);
    const size_t before = out->size();
    append_utf8(*out, ch.c);
    out_align->insert(out_align->end(), out->size() - before, a);
  }
}

struct AddedToken {
  int64_t id = -1;
  std::string content;
  std::string match;  // what is searched: content, or its normalized form for `normalized` tokens
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

// The UTF-16 form of a piece for ICU, with the piece byte where each code unit's character starts.
struct Utf16 {
  std::vector<UChar> units;
  std::vector<uint32_t> byte_at;  // size units + 1; the last entry is the piece's length
};

// Heterogeneous lookup (string_view keys) for the byte-string maps on the hot path.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// A BPE result: ids and byte lengths of the tokens of one word.
using WordTokens = std::vector<std::pair<int32_t, uint32_t>>;

// ------------------------------------------------------------------------------------ the loader

// Reads one JSON file; every complaint names the file and the key.
class JsonFile {
 public:
  explicit JsonFile(std::string path) : path_(std::move(path)) {}

  json parse() const {
    std::ifstream in(path_, std::ios::binary);
    if (!in) throw FormatError(fmt::format("{}: cannot open: {}", path_, std::strerror(errno)));
    std::stringstream ss;
    ss << in.rdbuf();
    try {
      return json::parse(ss.str());
    } catch (const json::parse_error& e) {
      throw FormatError(fmt::format("{}: not valid JSON ({})", path_, e.what()));
    }
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw FormatError(fmt::format("{}: {} {}", path_, key, what));
  }
  const json& get(const json& obj, const char* name, const std::string& key) const {
    auto it = obj.find(name);
    if (it == obj.end()) fail(key, "is missing");
    return *it;
  }
  bool flag(const json& obj, const char* name, const std::string& key, bool fallback) const {
    auto it = obj.find(name);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) fail(key, fmt::format("must be true or false, not {}", it->dump()));
    return it->get<bool>();
  }
  std::string string(const json& obj, const char* name, const std::string& key) const {
    const json& v = get(obj, name, key);
    if (!v.is_string()) fail(key, fmt::format("must be a string, not {}", v.dump()));
    return v.get<std::string>();
  }
  // A key that must be null or absent (features of other BPE flavours).
  void want_null(const json& obj, const char* name, const std::string& key, const std::string& why) const {
    auto it = obj.find(name);
    if (it != obj.end() && !it->is_null()) fail(key, fmt::format("is {}; {}", it->dump(), why));
  }

 private:
  std::string path_;
};

std::string type_of(const JsonFile& f, const json& obj, const std::string& where) {
  if (!obj.is_object()) f.fail(where, fmt::format("must be an object, not {}", obj.dump()));
  return f.string(obj, "type", where + ".type");
}

// ---------------------------------------------------------------------------------- the tokenizer

class HfBpeTokenizer final : public Tokenizer {
 public:
  explicit HfBpeTokenizer(const std::string& path);

  std::vector<int64_t> encode(const std::string& text,
                              std::vector<std::pair<size_t, size_t>>* offsets = nullptr) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return eos_; }
  int64_t pad_id() const override { return pad_; }
  std::string describe() const override {
    return fmt::format("Hugging Face BPE tokenizer.json ({} ids) from {}", vocab_size_, path_);
  }

 private:
  // Per-call scratch, so that encode() is const and thread-safe.
  struct Scratch {
    std::deque<std::string> texts;  // normalized pieces
    std::deque<std::vector<Span>> aligns;
    std::vector<Segment> segments;
    std::vector<Piece> pieces, next;
    std::vector<MatchRange> matches;
    std::vector<std::pair<uint32_t, uint32_t>> kept;
    std::vector<std::unique_ptr<icu::RegexMatcher>> matchers;
    Utf16 u16;
    std::string word;
    WordTokens tokens;
  };
  struct AddedPart {
    int32_t added;  // -1: text between added tokens
    size_t begin, end;
  };

  void load_model(const JsonFile& f, const json& model);
  void load_normalizer(const JsonFile& f, const json& n, const std::string& where);
  void load_pre_tokenizer(const JsonFile& f, const json& p, const std::string& where);
  void load_post_processor(const JsonFile& f, const json& p, const std::string& where);
  void load_decoder(const JsonFile& f, const json& d, const std::string& where);
  void load_special_ids(const fs::path& dir);

  int64_t token_to_id(const std::string& token) const;
  bool normalize(std::string_view in, std::string* out, std::vector<Span>* align, uint32_t base) const;
  void find_added(std::string_view s, const Trie& trie, std::vector<AddedPart>* out) const;
  void split_segments(const std::string& text, Scratch& sc) const;
  void pre_tokenize(uint32_t seg, Scratch& sc) const;
  void split_piece(const Piece& p, size_t step, Scratch& sc) const;
  void bpe(std::string_view word, WordTokens* out) const;
  void merge_word(std::string_view word, WordTokens* out) const;

  std::string path_;
  // Model. BPE keys are raw bytes (see the top of the file); ids are the file's.
  StringMap<int32_t> bpe_vocab_;                                       // byte-level vocab entries, by their bytes
  std::unordered_map<std::string, int64_t> vocab_;                     // every vocab entry, by its string
  std::array<int32_t, 256> byte_id_{};                                 // the one-byte tokens
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // (left, right) -> (rank, merged)
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  // Added tokens.
  std::vector<AddedToken> added_;
  Trie raw_trie_, normalized_trie_;
  // Pipeline.
  std::vector<NormStep> normalizers_;
  std::vector<PreStep> steps_;
  std::vector<bool> trims_;  // one per trimming post-processor: its add_prefix_space
  // Decoding and the post-processor's trimming, per id.
  std::vector<std::string> decode_bytes_;
  std::vector<uint8_t> decodable_, special_;
  std::vector<uint16_t> lead_spaces_, trail_spaces_;
  int64_t vocab_size_ = 0;
  int64_t bos_ = -1, eos_ = -1, pad_ = -1;
  // BPE results of short words, in shards (one lock each) so that loader threads rarely wait on
  // each other. A shard is cleared when full: a training run meets new words forever.
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheWordsPerShard = 4096;
  static constexpr size_t kCacheWordBytes = 256;
  struct CacheShard {
    std::mutex mu;
    StringMap<WordTokens> words;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

HfBpeTokenizer::HfBpeTokenizer(const std::string& path) : path_(path) {
  std::error_code ec;
  fs::path file(path);
  if (fs::is_directory(file, ec)) file /= "tokenizer.json";  // a model folder
  path_ = file.string();
  const JsonFile f(path_);
  const json root = f.parse();
  if (!root.is_object()) f.fail("the top level", "must be a JSON object (a Hugging Face tokenizer.json)");

  load_model(f, f.get(root, "model", "model"));

  // Added tokens: ids as the file gives them (the library re-derives them and warns when they differ).
  if (auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
    if (!it->is_array()) f.fail("added_tokens", "must be a list of {id, content, special, ...}");
    for (size_t i = 0; i < it->size(); ++i) {
      const json& t = (*it)[i];
      const std::string key = fmt::format("added_tokens[{}]", i);
      if (!t.is_object()) f.fail(key, "must be an object {id, content, ...}");
      const json& id = f.get(t, "id", key + ".id");
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
        f.fail(key + ".id", fmt::format("must be a non-negative integer, not {}", id.dump()));
      AddedToken a;
      a.id = id.get<int64_t>();
      a.content = f.string(t, "content", key + ".content");
      a.special = f.flag(t, "special", key + ".special", false);
      a.single_word = f.flag(t, "single_word", key + ".single_word", false);
      a.lstrip = f.flag(t, "lstrip", key + ".lstrip", false);
      a.rstrip = f.flag(t, "rstrip", key + ".rstrip", false);
      a.normalized = f.flag(t, "normalized", key + ".normalized", !a.special);
      if (a.content.empty()) continue;  // the library ignores empty tokens
      added_.push_back(std::move(a));
    }
  }

  if (auto it = root.find("normalizer"); it != root.end() && !it->is_null()) load_normalizer(f, *it, "normalizer");
  const json* pre = nullptr;
  if (auto it = root.find("pre_tokenizer"); it != root.end()) pre = &*it;
  if (pre == nullptr || pre->is_null())
    f.fail("pre_tokenizer", "is null; forge reads byte-level BPE, which needs a ByteLevel pre-tokenizer");
  load_pre_tokenizer(f, *pre, "pre_tokenizer");
  if (std::none_of(steps_.begin(), steps_.end(), [](const PreStep& s) { return s.kind == PreStep::Kind::kByteLevel; }))
    f.fail("pre_tokenizer", "has no ByteLevel step; forge reads byte-level BPE, which needs one");
  if (auto it = root.find("post_processor"); it != root.end() && !it->is_null())
    load_post_processor(f, *it, "post_processor");
  const json* dec = nullptr;
  if (auto it = root.find("decoder"); it != root.end()) dec = &*it;
  if (dec == nullptr || dec->is_null())
    f.fail("decoder", "is null; forge reads byte-level BPE: decoder.type \"ByteLevel\"");
  load_decoder(f, *dec, "decoder");

  // Tries: normalized tokens are searched for in their normalized form, in the normalized text.
  for (size_t i = 0; i < added_.size(); ++i) {
    AddedToken& a = added_[i];
    a.match = a.content;
    if (a.normalized && !normalizers_.empty()) {
      std::string out;
      std::vector<Span> align;
      if (normalize(a.content, &out, &align, 0)) a.match = out;
    }
    (a.normalized ? normalized_trie_ : raw_trie_).add(a.match, static_cast<int32_t>(i));
  }

  // Per-id tables. The library resolves an id through the added tokens first (decoding the
  // normalized form of a normalized one), then the model.
  int64_t max_id = -1;
  for (const auto& [s, id] : vocab_) max_id = std::max(max_id, id);
  for (const auto& a : added_) max_id = std::max(max_id, a.id);
  vocab_size_ = max_id + 1;
  decode_bytes_.assign(vocab_size_, {});
  decodable_.assign(vocab_size_, 0);
  special_.assign(vocab_size_, 0);
  lead_spaces_.assign(vocab_size_, 0);
  trail_spaces_.assign(vocab_size_, 0);
  std::vector<const std::string*> token_of(vocab_size_, nullptr);
  for (const auto& [s, id] : vocab_) {
    if (token_of[id] == nullptr) token_of[id] = &s;
    // The post-processor's trim counts "Ġ" and whitespace at both ends of the token string (for
    // BPE tokens, the model's string of the id).
    lead_spaces_[id] = static_cast<uint16_t>(std::min<size_t>(count_spaces(s, true), 0xFFFF));
    trail_spaces_[id] = static_cast<uint16_t>(std::min<size_t>(count_spaces(s, false), 0xFFFF));
  }
  for (const auto& a : added_) token_of[a.id] = &a.match;
  std::unordered_set<std::string> specials;
  for (const auto& a : added_)
    if (a.special) specials.insert(a.content);
  std::string bytes;
  for (int64_t id = 0; id < vocab_size_; ++id) {
    if (token_of[id] == nullptr) continue;
    const std::string& tok = *token_of[id];
    decodable_[id] = 1;
    special_[id] = specials.count(tok) > 0;
    decode_bytes_[id] = unmap_bytes(tok, &bytes) ? bytes : tok;
  }

  load_special_ids(fs::path(path_).parent_path());
}

void HfBpeTokenizer::load_model(const JsonFile& f, const json& model) {
  if (!model.is_object()) f.fail("model", "must be an object");
  if (auto it = model.find("type"); it != model.end()) {
    if (!it->is_string() || it->get<std::string>() != "BPE")
      f.fail("model.type",
             fmt::format("{} is not supported (forge reads byte-level BPE: model.type \"BPE\")", it->dump()));
  } else if (!model.contains("merges")) {
    f.fail("model.type", "is missing and the model has no merges (forge reads byte-level BPE: model.type \"BPE\")");
  }
  f.want_null(model, "continuing_subword_prefix", "model.continuing_subword_prefix",
              "forge reads byte-level BPE, which has no subword prefix (null)");
  f.want_null(model, "end_of_word_suffix", "model.end_of_word_suffix",
              "forge reads byte-level BPE, which has no end-of-word suffix (null)");
  if (f.flag(model, "byte_fallback", "model.byte_fallback", false))
    f.fail("model.byte_fallback",
           "is true; forge reads byte-level BPE (byte_fallback false), not SentencePiece-style BPE");
  if (auto it = model.find("dropout"); it != model.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0)
      f.fail("model.dropout",
             fmt::format("is {}; BPE dropout makes encoding random, forge needs null or 0", it->dump()));
  }
  fuse_unk_ = f.flag(model, "fuse_unk", "model.fuse_unk", false);
  ignore_merges_ = f.flag(model, "ignore_merges", "model.ignore_merges", false);

  const json& vocab = f.get(model, "vocab", "model.vocab");
  if (!vocab.is_object()) f.fail("model.vocab", "must be an object {token: id}");
  vocab_.reserve(vocab.size());
  bpe_vocab_.reserve(vocab.size());
  byte_id_.fill(-1);
  std::string bytes;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > std::numeric_limits<int32_t>::max())
      f.fail(fmt::format("model.vocab[{}]", json(it.key()).dump()),
             fmt::format("must be a non-negative integer id, not {}", v.dump()));
    const auto id = static_cast<int32_t>(v.get<int64_t>());
    vocab_[it.key()] = id;
    if (unmap_bytes(it.key(), &bytes) && !bytes.empty()) {
      if (bytes.size() == 1) byte_id_[static_cast<unsigned char>(bytes[0])] = id;
      bpe_vocab_[bytes] = id;
    }
  }

  if (auto it = model.find("unk_token"); it != model.end() && !it->is_null()) {
    if (!it->is_string()) f.fail("model.unk_token", fmt::format("must be a string or null, not {}", it->dump()));
    auto v = vocab_.find(it->get<std::string>());
    if (v == vocab_.end()) f.fail("model.unk_token", fmt::format("{} is not in model.vocab", it->dump()));
    unk_id_ = static_cast<int32_t>(v->second);
  }

  // Merges: "left right" strings (older files) or [left, right] pairs. A pair listed twice keeps
  // its last rank, as in the library.
  const json& merges = f.get(model, "merges", "model.merges");
  if (!merges.is_array()) f.fail("model.merges", "must be a list of \"left right\" strings or [left, right] pairs");
  merges_.reserve(merges.size());
  uint32_t rank = 0;
  std::string left_bytes, right_bytes;
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    const std::string key = fmt::format("model.merges[{}]", i);
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      if (s.rfind("#version", 0) == 0) continue;  // a merges.txt header carried over
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        f.fail(key, fmt::format("{} is not a merge: expected \"left right\" (one space) or [left, right]", m.dump()));
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      f.fail(key, fmt::format("{} is not a merge: expected \"left right\" or [left, right]", m.dump()));
    }
    auto find = [&](const std::string& tok) {
      auto v = vocab_.find(tok);
      if (v == vocab_.end()) f.fail(key, fmt::format("{}: {} is not in model.vocab", m.dump(), json(tok).dump()));
      return static_cast<int32_t>(v->second);
    };
    const int32_t a = find(left), b = find(right), merged = find(left + right);
    const uint32_t r = rank++;
    // Only merges of byte-level tokens can ever apply: a word's symbols start as single bytes.
    if (!unmap_bytes(left, &left_bytes) || !unmap_bytes(right, &right_bytes)) continue;
    merges_[(static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b)] = {r, merged};
  }
}

void HfBpeTokenizer::load_normalizer(const JsonFile& f, const json& n, const std::string& where) {
  const std::string type = type_of(f, n, where);
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = nullptr;
  if (type == "Sequence") {
    const json& list = f.get(n, "normalizers", where + ".normalizers");
    if (!list.is_array()) f.fail(where + ".normalizers", "must be a list");
    for (size_t i = 0; i < list.size(); ++i) load_normalizer(f, list[i], fmt::format("{}.normalizers[{}]", where, i));
    return;
  }
  NormStep step;
  const bool compat = type == "NFKC" || type == "NFKD";
  step.compose = type == "NFC" || type == "NFKC";
  if (type == "NFC")
    norm = icu::Normalizer2::getNFCInstance(status);
  else if (type == "NFD")
    norm = icu::Normalizer2::getNFDInstance(status);
  else if (type == "NFKC")
    norm = icu::Normalizer2::getNFKCInstance(status);
  else if (type == "NFKD")
    norm = icu::Normalizer2::getNFKDInstance(status);
  else
    f.fail(where + ".type",
           fmt::format("\"{}\" is not supported (forge reads NFC, NFD, NFKC, NFKD and Sequence)", type));
  step.check = norm;
  step.decompose = compat ? icu::Normalizer2::getNFKDInstance(status) : icu::Normalizer2::getNFDInstance(status);
  step.composer = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status) || !step.check || !step.decompose || !step.composer)
    f.fail(where + ".type", fmt::format("\"{}\": ICU has no such normalizer ({})", type, u_errorName(status)));
  normalizers_.push_back(step);
}

// Oniguruma (the library's engine) to ICU: the syntax of real tokenizer regexes is common to both;
// only \h / \H differ (a hex digit in Oniguruma, horizontal space in ICU).
std::string onig_to_icu(const std::string& p) {
  std::string out;
  out.reserve(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      const char c = p[i + 1];
      if (c == 'h')
        out += "[0-9a-fA-F]";
      else if (c == 'H')
        out += "[^0-9a-fA-F]";
      else {
        out += p[i];
        out += c;
      }
      ++i;
    } else {
      out += p[i];
    }
  }
  return out;
}

std::unique_ptr<icu::RegexPattern> compile_regex(const JsonFile& f, const std::string& pattern, bool literal,
                                                 const std::string& key) {
  // Oniguruma's Ruby syntax: ^ and $ match at every "\n" (only), "." matches all but "\n".
  const uint32_t flags = literal ? UREGEX_LITERAL : (UREGEX_MULTILINE | UREGEX_UNIX_LINES);
  const std::string src = literal ? pattern : onig_to_icu(pattern);
  UErrorCode status = U_ZERO_ERROR;
  UParseError pe{};
  std::unique_ptr<icu::RegexPattern> re(
      icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(src), flags, pe, status));
  if (U_FAILURE(status) || !re)
    f.fail(key, fmt::format("{} does not compile as a regex ({} at line {}, offset {})", json(pattern).dump(),
                            u_errorName(status), pe.line, pe.offset));
  return re;
}

void HfBpeTokenizer::load_pre_tokenizer(const JsonFile& f, const json& p, const std::string& where) {
  const std::string type = type_of(f, p, where);
  if (type == "Sequence") {
    const json& list = f.get(p, "pretokenizers", where + ".pretokenizers");
    if (!list.is_array()) f.fail(where + ".pretokenizers", "must be a list");
    for (size_t i = 0; i < list.size(); ++i)
      load_pre_tokenizer(f, list[i], fmt::format("{}.pretokenizers[{}]", where, i));
    return;
  }
  PreStep step;
  if (type == "ByteLevel") {
    for (const auto& s : steps_)
      if (s.kind == PreStep::Kind::kByteLevel)
        f.fail(where, "is a second ByteLevel pre-tokenizer; forge reads byte-level BPE, which needs exactly one");
    step.kind = PreStep::Kind::kByteLevel;
    step.add_prefix_space = f.flag(p, "add_prefix_space", where + ".add_prefix_space", true);
    if (f.flag(p, "use_regex", where + ".use_regex", true)) {
      step.regex = compile_regex(f, kGpt2Regex, false, where);
      step.fast = FastRegex::kGpt2;
    }
  } else if (type == "Split") {
    step.kind = PreStep::Kind::kSplit;
    const json& pat = f.get(p, "pattern", where + ".pattern");
    if (pat.is_object() && pat.size() == 1 && pat.contains("Regex") && pat["Regex"].is_string()) {
      const std::string re = pat["Regex"].get<std::string>();
      step.regex = compile_regex(f, re, false, where + ".pattern.Regex");
      if (re == kGpt2Regex)
        step.fast = FastRegex::kGpt2;
      else if (re == kLlama3Regex)
        step.fast = FastRegex::kLlama3;
    } else if (pat.is_object() && pat.size() == 1 && pat.contains("String") && pat["String"].is_string()) {
      if (pat["String"].get<std::string>().empty()) f.fail(where + ".pattern.String", "is empty");
      step.regex = compile_regex(f, pat["String"].get<std::string>(), true, where + ".pattern.String");
    } else {
      f.fail(where + ".pattern",
             fmt::format("{} must be {{\"Regex\": \"...\"}} or {{\"String\": \"...\"}}", pat.dump()));
    }
    const std::string behavior = f.string(p, "behavior", where + ".behavior");
    if (behavior == "Removed")
      step.behavior = Behavior::kRemoved;
    else if (behavior == "Isolated")
      step.behavior = Behavior::kIsolated;
    else if (behavior == "MergedWithPrevious")
      step.behavior = Behavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext")
      step.behavior = Behavior::kMergedWithNext;
    else if (behavior == "Contiguous")
      step.behavior = Behavior::kContiguous;
    else
      f.fail(where + ".behavior", fmt::format("\"{}\" is not one of Removed, Isolated, MergedWithPrevious, "
                                              "MergedWithNext, Contiguous",
                                              behavior));
    step.invert = f.flag(p, "invert", where + ".invert", false);
  } else if (type == "Digits") {
    step.kind = PreStep::Kind::kDigits;
    step.behavior = f.flag(p, "individual_digits", where + ".individual_digits", false) ? Behavior::kIsolated
                                                                                        : Behavior::kContiguous;
  } else {
    f.fail(where + ".type", fmt::format("\"{}\" is not supported (forge reads byte-level BPE: ByteLevel, Split, "
                                        "Digits, Sequence)",
                                        type));
  }
  steps_.push_back(std::move(step));
}

void HfBpeTokenizer::load_post_processor(const JsonFile& f, const json& p, const std::string& where) {
  // forge adds BOS/EOS itself; only the offset trimming matters here, which the library applies to
  // every encoding, special tokens or not.
  if (!p.is_object()) f.fail(where, "must be an object or null");
  auto type = p.find("type");
  if (type == p.end() || !type->is_string()) return;
  if (*type == "Sequence") {
    auto list = p.find("processors");
    if (list == p.end() || !list->is_array()) f.fail(where + ".processors", "must be a list");
    for (size_t i = 0; i < list->size(); ++i)
      load_post_processor(f, (*list)[i], fmt::format("{}.processors[{}]", where, i));
  } else if (*type == "ByteLevel" || *type == "RobertaProcessing") {
    if (f.flag(p, "trim_offsets", where + ".trim_offsets", true))
      trims_.push_back(f.flag(p, "add_prefix_space", where + ".add_prefix_space", true));
  }
}

void HfBpeTokenizer::load_decoder(const JsonFile& f, const json& d, const std::string& where) {
  const std::string type = type_of(f, d, where);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const json& list = f.get(d, "decoders", where + ".decoders");
    if (!list.is_array() || list.empty()) f.fail(where + ".decoders", "must be a non-empty list");
    for (size_t i = 0; i < list.size(); ++i) load_decoder(f, list[i], fmt::format("{}.decoders[{}]", where, i));
    return;
  }
  f.fail(where + ".type",
         fmt::format("\"{}\" is not supported (forge reads byte-level BPE: decoder.type \"ByteLevel\")", type));
}

int64_t HfBpeTokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : added_)
    if (a.content == token) return a.id;
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void HfBpeTokenizer::load_special_ids(const fs::path& dir) {
  // tokenizer_config.json (transformers' file) names them; else well-known special tokens.
  const fs::path config_path = dir / "tokenizer_config.json";
  json config;
  std::error_code ec;
  const bool has_config = fs::exists(config_path, ec);
  const JsonFile cf(config_path.string());
  if (has_config) {
    config = cf.parse();
    if (!config.is_object()) cf.fail("the top level", "must be a JSON object");
  }
  auto from_config = [&](const char* key) -> int64_t {
    if (!has_config) return -1;
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) return -1;
    const json* v = &*it;
    if (v->is_object()) {
      auto c = v->find("content");
      if (c == v->end()) cf.fail(key, "is an object without \"content\"");
      v = &*c;
    }
    if (!v->is_string()) cf.fail(key, fmt::format("must be a token string or {{\"content\": ...}}, not {}", v->dump()));
    const int64_t id = token_to_id(v->get<std::string>());
    if (id < 0) cf.fail(key, fmt::format("{} is not a token of {}", v->dump(), path_));
    return id;
  };
  auto well_known = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names)
      for (const auto& a : added_)
        if (a.special && a.content == n) return a.id;
    return -1;
  };
  bos_ = from_config("bos_token");
  if (bos_ < 0) bos_ = well_known({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  eos_ = from_config("eos_token");
  if (eos_ < 0) eos_ = well_known({"<|end_of_text|>", "<|eot_id|>", "</s>", "<|endoftext|>"});
  pad_ = from_config("pad_token");
  if (pad_ < 0) pad_ = well_known({"<pad>", "<|pad|>", "[PAD]"});
  if (pad_ < 0) pad_ = eos_;  // no pad token: pad with EOS (padding is masked out of the loss anyway)
}

// -------------------------------------------------------------------------------------- encoding

// The normalizers over `in`: false when they leave it as it is. Otherwise *out is the normalized
// text and (*align)[i] the original span (offset by `base`) of the character byte i came from.
bool HfBpeTokenizer::normalize(std::string_view in, std::string* out, std::vector<Span>* align, uint32_t base) const {
  if (normalizers_.empty() || in.empty()) return false;
  std::string cur;
  std::vector<Span> cur_align;
  bool changed = false;
  for (const NormStep& step : normalizers_) {
    const std::string_view text = changed ? std::string_view(cur) : in;
    UErrorCode status = U_ZERO_ERROR;
    const bool done = step.check->isNormalized(
        icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size()))), status);
    if (U_SUCCESS(status) && done) continue;  // the library's result is the text itself, aligned 1:1
    if (!changed) {
      cur_align.clear();
      cur_align.reserve(in.size());
      for (size_t i = 0; i < in.size();) {
        char32_t c;
        const size_t n = next_char(in, i, &c);
        cur_align.insert(cur_align.end(), n,
                         Span{base + static_cast<uint32_t>(i), base + static_cast<uint32_t>(i + n)});
        i += n;
      }
    }
    std::string next;
    std::vector<Span> next_align;
    unicode_normalize(text, cur_align, step, &next, &next_align);
    cur = std::move(next);
    cur_align = std::move(next_align);
    changed = true;
  }
  if (!changed) return false;
  *out = std::move(cur);
  *align = std::move(cur_align);
  return true;
}

// AddedVocabulary::find_matches: the added tokens of one trie in `s`, and the text between them.
void HfBpeTokenizer::find_added(std::string_view s, const Trie& trie, std::vector<AddedPart>* out) const {
  out->clear();
  if (s.empty()) return;
  if (trie.empty()) {
    out->push_back({-1, 0, s.size()});
    return;
  }
  size_t start_offset = 0;
  for (size_t pos = 0; pos < s.size();) {
    const auto [len, idx] = trie.longest_at(s, pos);
    if (idx < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the match iterator goes on after the match, whatever rstrip takes below
    const AddedToken& a = added_[idx];
    if (a.single_word) {
      char32_t before = 0, after = 0;
      if (start > 0) next_char(s, prev_char_start(s, start), &before);
      if (stop < s.size()) next_char(s, stop, &after);
      if ((start > 0 && is_word_char(before)) || (stop < s.size() && is_word_char(after))) continue;
    }
    if (a.lstrip) {
      size_t b = start;
      while (b > 0) {
        const size_t p = prev_char_start(s, b);
        char32_t c;
        next_char(s, p, &c);
        if (!is_space(c)) break;
        b = p;
      }
      start = std::max(b, start_offset);
    }
    if (a.rstrip) {
      while (stop < s.size()) {
        char32_t c;
        const size_t n = next_char(s, stop, &c);
        if (!is_space(c)) break;
        stop += n;
      }
    }
    if (start_offset < start) out->push_back({-1, start_offset, start});
    out->push_back({idx, start, stop});
    start_offset = stop;
  }
  if (start_offset != s.size()) out->push_back({-1, start_offset, s.size()});
}

void HfBpeTokenizer::split_segments(const std::string& text, Scratch& sc) const {
  std::vector<AddedPart> raw, norm;
  find_added(text, raw_trie_, &raw);
  for (const auto& part : raw) {
    if (part.end <= part.begin) continue;
    const std::string_view piece(text.data() + part.begin, part.end - part.begin);
    if (part.added >= 0) {
      Segment s;
      s.text = piece;
      s.added = part.added;
      s.span = {static_cast<uint32_t>(part.begin), static_cast<uint32_t>(part.end)};
      sc.segments.push_back(s);
      continue;
    }
    Segment whole;
    whole.text = piece;
    whole.base = static_cast<uint32_t>(part.begin);
    std::string normalized;
    std::vector<Span> align;
    if (normalize(piece, &normalized, &align, static_cast<uint32_t>(part.begin))) {
      sc.texts.push_back(std::move(normalized));
      sc.aligns.push_back(std::move(align));
      whole.text = sc.texts.back();
      whole.align = sc.aligns.back().data();
      whole.base = 0;
    }
    find_added(whole.text, normalized_trie_, &norm);
    for (const auto& p : norm) {
      if (p.end <= p.begin) continue;
      Segment s;
      s.text = whole.text.substr(p.begin, p.end - p.begin);
      s.added = p.added;
      if (whole.align) {
        s.align = whole.align + p.begin;
        s.span = {whole.align[p.begin].begin, whole.align[p.end - 1].end};
      } else {
        s.base = whole.base + static_cast<uint32_t>(p.begin);
        s.span = {s.base, s.base + static_cast<uint32_t>(p.end - p.begin)};
      }
      sc.segments.push_back(s);
    }
  }
}

// The bytes of a piece, and its UTF-16 form for ICU: mapped pieces are one code unit per byte (the
// ByteLevel alphabet), the others are decoded as UTF-8.
void piece_text(const Segment& seg, const Piece& p, std::string* bytes) {
  bytes->clear();
  if (p.prefix) bytes->push_back(' ');
  bytes->append(seg.text.data() + p.begin, p.end - p.begin);
}

void to_utf16(std::string_view bytes, bool mapped, Utf16* u) {
  u->units.clear();
  u->byte_at.clear();
  if (mapped) {
    const ByteAlphabet& a = alphabet();
    for (size_t i = 0; i < bytes.size(); ++i) {
      u->units.push_back(a.to_cp[static_cast<unsigned char>(bytes[i])]);
      u->byte_at.push_back(static_cast<uint32_t>(i));
    }
  } else {
    for (size_t i = 0; i < bytes.size();) {
      char32_t c;
      const size_t n = next_char(bytes, i, &c);
      if (c < 0x10000) {
        u->units.push_back(static_cast<UChar>(c));
        u->byte_at.push_back(static_cast<uint32_t>(i));
      } else if (c == kIllFormed) {
        u->units.push_back(0xFFFD);
        u->byte_at.push_back(static_cast<uint32_t>(i));
      } else {
        u->units.push_back(U16_LEAD(c));
        u->units.push_back(U16_TRAIL(c));
        u->byte_at.push_back(static_cast<uint32_t>(i));
        u->byte_at.push_back(static_cast<uint32_t>(i));
      }
      i += n;
    }
  }
  u->byte_at.push_back(static_cast<uint32_t>(bytes.size()));
}

void HfBpeTokenizer::split_piece(const Piece& p, size_t k, Scratch& sc) const {
  const PreStep& step = steps_[k];
  const Segment& seg = sc.segments[p.seg];
  piece_text(seg, p, &sc.word);
  const uint32_t total = static_cast<uint32_t>(sc.word.size());
  auto& m = sc.matches;
  m.clear();
  uint32_t prev = 0;
  auto add_match = [&](uint32_t b, uint32_t e) {
    if (prev != b) m.push_back({prev, b, false});
    m.push_back({b, e, true});
    prev = e;
  };
  if (step.fast != FastRegex::kNone && !p.mapped) {
    fast_matches(step.fast, sc.word, &m);
    prev = total;
  } else if (step.regex) {
    if (!sc.matchers[k]) {
      UErrorCode status = U_ZERO_ERROR;
      sc.matchers[k].reset(step.regex->matcher(status));
      if (U_FAILURE(status)) throw RuntimeError(fmt::format("{}: ICU regex matcher: {}", path_, u_errorName(status)));
    }
    icu::RegexMatcher* matcher = sc.matchers[k].get();
    to_utf16(sc.word, p.mapped, &sc.u16);
    const auto& units = sc.u16.units;
    const auto& byte_at = sc.u16.byte_at;
    icu::UnicodeString us(false, units.data(), static_cast<int32_t>(units.size()));
    matcher->reset(us);
    int32_t last_end = -1;
    UErrorCode status = U_ZERO_ERROR;
    while (matcher->find()) {
      const int32_t s = matcher->start(status), e = matcher->end(status);
      // Oniguruma (the library's engine) refuses an empty match right where the last match ended.
      if (s == e && s == last_end) continue;
      last_end = e;
      add_match(byte_at[s], byte_at[e]);
    }
  } else {  // Digits: every numeric character is a match of its own
    to_utf16(sc.word, p.mapped, &sc.u16);
    const auto& units = sc.u16.units;
    const auto& byte_at = sc.u16.byte_at;
    const auto len = static_cast<int32_t>(units.size());
    for (int32_t i = 0; i < len;) {
      const int32_t start = i;
      UChar32 c;
      U16_NEXT(units.data(), i, len, c);
      if (is_numeric(c)) add_match(byte_at[start], byte_at[i]);
    }
  }
  if (prev != total) m.push_back({prev, total, false});
  if (step.invert)
    for (auto& r : m) r.match = !r.match;
  apply_behavior(m, step.behavior, &sc.kept);
  for (const auto& [b, e] : sc.kept) {
    if (e <= b) continue;
    Piece q = p;
    if (p.prefix) {  // byte 0 is the prepended space
      q.prefix = b == 0;
      q.begin = p.begin + (b == 0 ? 0 : b - 1);
      q.end = p.begin + e - 1;
    } else {
      q.begin = p.begin + b;
      q.end = p.begin + e;
    }
    sc.next.push_back(q);
  }
}

void HfBpeTokenizer::pre_tokenize(uint32_t seg, Scratch& sc) const {
  sc.pieces.clear();
  sc.pieces.push_back({seg, 0, static_cast<uint32_t>(sc.segments[seg].text.size())});
  for (size_t k = 0; k < steps_.size(); ++k) {
    const PreStep& step = steps_[k];
    sc.next.clear();
    for (const Piece& p : sc.pieces) {
      if (step.kind == PreStep::Kind::kByteLevel) {
        Piece q = p;
        if (step.add_prefix_space && sc.segments[p.seg].text[p.begin] != ' ') q.prefix = true;
        if (step.regex)
          split_piece(q, k, sc);
        else
          sc.next.push_back(q);
      } else {
        split_piece(p, k, sc);
      }
    }
    if (step.kind == PreStep::Kind::kByteLevel)
      for (auto& q : sc.next) q.mapped = true;
    std::swap(sc.pieces, sc.next);
  }
}

// BPE::merge_word and Word::merge_all: symbols start as single bytes; the lowest-rank merge goes
// first, leftmost among equals (a queue entry whose pair has changed since is stale and skipped).
void HfBpeTokenizer::merge_word(std::string_view word, WordTokens* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t len;
  };
  struct Merge {
    uint32_t rank;
    uint32_t pos;
    int32_t merged;
    bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Merge> queue;  // a binary heap (std::push_heap / pop_heap)
  symbols.clear();
  queue.clear();
  // Bytes missing from the vocab become the unk token (fused when fuse_unk), or vanish without one.
  int32_t unk_len = 0;
  auto add = [&](int32_t id, uint32_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, len});
    if (n > 0) symbols[n - 1].next = n;
  };
  for (unsigned char b : word) {
    const int32_t id = byte_id_[b];
    if (id >= 0) {
      if (unk_len > 0) add(unk_id_, unk_len);
      unk_len = 0;
      add(id, 1);
    } else if (unk_id_ >= 0) {
      if (unk_len > 0 && !fuse_unk_) {
        add(unk_id_, unk_len);
        unk_len = 0;
      }
      ++unk_len;
    }
  }
  if (unk_len > 0) add(unk_id_, unk_len);

  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  auto push = [&](uint32_t rank, uint32_t pos, int32_t merged) {
    queue.push_back({rank, pos, merged});
    std::push_heap(queue.begin(), queue.end());
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (const auto* m = lookup(symbols[i].id, symbols[i + 1].id))
      queue.push_back({m->first, static_cast<uint32_t>(i), m->second});
  std::make_heap(queue.begin(), queue.end());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const Merge top = queue.back();
    queue.pop_back();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = symbols[next_pos];  // a copy: `cur` changes below
    const auto* m = lookup(cur.id, right.id);
    if (m == nullptr || m->second != top.merged) continue;
    cur.id = top.merged;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = static_cast<int32_t>(top.pos);
    if (cur.prev >= 0)
      if (const auto* pm = lookup(symbols[cur.prev].id, cur.id))
        push(pm->first, static_cast<uint32_t>(cur.prev), pm->second);
    if (cur.next >= 0)
      if (const auto* nm = lookup(cur.id, symbols[cur.next].id)) push(nm->first, top.pos, nm->second);
  }
  out->clear();
  for (const auto& s : symbols)
    if (s.len > 0) out->emplace_back(s.id, s.len);
}

void HfBpeTokenizer::bpe(std::string_view word, WordTokens* out) const {
  if (ignore_merges_) {
    auto it = bpe_vocab_.find(word);
    if (it != bpe_vocab_.end()) {
      out->assign(1, {it->second, static_cast<uint32_t>(word.size())});
      return;
    }
  }
  if (word.size() >= kCacheWordBytes) {
    merge_word(word, out);
    return;
  }
  const size_t mix =
      word.size() * 31 + static_cast<unsigned char>(word.front()) * 7 + static_cast<unsigned char>(word.back());
  CacheShard& shard = cache_[mix % kCacheShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      *out = it->second;
      return;
    }
  }
  merge_word(word, out);
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.words.size() >= kCacheWordsPerShard) shard.words.clear();
  shard.words.emplace(std::string(word), *out);
}

std::vector<int64_t> HfBpeTokenizer::encode(const std::string& text,
                                            std::vector<std::pair<size_t, size_t>>* offsets) const {
  if (text.size() >= std::numeric_limits<uint32_t>::max())
    throw InvalidArgument(fmt::format("{}: cannot encode a text of {} bytes (4 GiB at most)", path_, text.size()));
  std::vector<int64_t> ids;
  if (offsets) offsets->clear();
  Scratch sc;
  sc.matchers.resize(steps_.size());
  split_segments(text, sc);

  // The post-processor's trim (ByteLevel process_offsets), in characters of the original text.
  auto emit = [&](int64_t id, uint32_t begin, uint32_t end, size_t lead, size_t trail) {
    if (offsets) {
      size_t b = begin, e = end;
      for (const bool add_prefix_space : trims_) {
        if (lead > 0) {
          size_t l = lead;
          if ((ids.empty() || b == 0) && add_prefix_space && l == 1) l = 0;  // the prefix space it added
          size_t nb = b;
          char32_t c;
          for (size_t k = 0; k < l && nb < text.size(); ++k) nb += next_char(text, nb, &c);
          b = std::min(nb, e);
        }
        if (trail > 0) {
          size_t ne = e, k = 0;
          for (; k < trail && ne > 0; ++k) ne = prev_char_start(text, ne);
          if (k == trail) e = std::max(ne, b);  // the library's "offsets.1 >= trailing_spaces"
        }
      }
      offsets->emplace_back(b, e);
    }
    ids.push_back(id);
  };

  for (uint32_t si = 0; si < sc.segments.size(); ++si) {
    const Segment seg = sc.segments[si];
    if (seg.added >= 0) {
      // The token string of an added token is the text it matched (with what lstrip/rstrip took).
      const bool trim = offsets && !trims_.empty();
      emit(added_[seg.added].id, seg.span.begin, seg.span.end, trim ? count_spaces(seg.text, true) : 0,
           trim ? count_spaces(seg.text, false) : 0);
      continue;
    }
    pre_tokenize(si, sc);
    for (const Piece& p : sc.pieces) {
      piece_text(seg, p, &sc.word);
      bpe(sc.word, &sc.tokens);
      uint32_t k = 0;
      for (const auto& [id, len] : sc.tokens) {
        uint32_t begin = 0, end = 0;
        if (offsets) {
          // Byte j of the pre-token -> original span of its character; the prefix space has the
          // span of the piece's first character (NormalizedString::prepend).
          auto span_of = [&](uint32_t j) -> Span {
            const uint32_t pos = (p.prefix && j == 0) ? p.begin : p.begin + j - (p.prefix ? 1 : 0);
            if (seg.align) return seg.align[pos];
            const auto [cb, ce] = char_around(seg.text, pos);
            return {seg.base + cb, seg.base + ce};
          };
          begin = span_of(k).begin;
          end = span_of(k + len - 1).end;
        }
        emit(id, begin, end, lead_spaces_[id], trail_spaces_[id]);
        k += len;
      }
    }
  }
  return ids;
}

std::string HfBpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  // The library skips ids it does not know, and special tokens; the ByteLevel decoder joins the
  // tokens' bytes and decodes them lossily.
  std::string bytes;
  for (const int64_t id : ids) {
    if (id < 0 || id >= vocab_size_ || !decodable_[id] || special_[id]) continue;
    bytes += decode_bytes_[id];
  }
  return utf8_lossy(bytes);
}

}  // namespace

std::shared_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) { return std::make_shared<HfBpeTokenizer>(path); }

}  // namespace forge
