#include "core/tokenizer/pre_tokenizers.h"

#include <unicode/utf16.h>

#include <algorithm>

#include <fmt/format.h>

#include "forge/error.h"

namespace forge::tok {

namespace {

const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";

// ------------------------------------------------------------------- the two common regexes

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

}  // namespace

void piece_text(const Segment& seg, const Piece& p, std::string* bytes) {
  bytes->clear();
  if (p.prefix) bytes->push_back(' ');
  bytes->append(seg.text.data() + p.begin, p.end - p.begin);
}

bool PreTokenizer::byte_level() const {
  return std::any_of(steps_.begin(), steps_.end(), [](const Step& s) { return s.kind == Step::Kind::kByteLevel; });
}

void PreTokenizer::load(const JsonFile& f, const json& p, const std::string& where) {
  const std::string type = type_of(f, p, where);
  if (type == "Sequence") {
    const json& list = f.get(p, "pretokenizers", where + ".pretokenizers");
    if (!list.is_array()) f.fail(where + ".pretokenizers", "must be a list");
    for (size_t i = 0; i < list.size(); ++i) load(f, list[i], fmt::format("{}.pretokenizers[{}]", where, i));
    return;
  }
  auto has = [&](Step::Kind kind) {
    return std::any_of(steps_.begin(), steps_.end(), [&](const Step& s) { return s.kind == kind; });
  };
  Step step;
  if (type == "ByteLevel") {
    if (has(Step::Kind::kByteLevel))
      f.fail(where, "is a second ByteLevel pre-tokenizer; forge reads byte-level BPE, which needs exactly one");
    if (has(Step::Kind::kMetaspace))
      f.fail(where, "is ByteLevel after a Metaspace pre-tokenizer; forge reads one or the other");
    step.kind = Step::Kind::kByteLevel;
    step.add_prefix_space = f.flag(p, "add_prefix_space", where + ".add_prefix_space", true);
    if (f.flag(p, "use_regex", where + ".use_regex", true)) {
      step.regex = compile_regex(f, kGpt2Regex, false, where);
      step.fast = static_cast<int>(FastRegex::kGpt2);
    }
  } else if (type == "Split") {
    step.kind = Step::Kind::kSplit;
    const json& pat = f.get(p, "pattern", where + ".pattern");
    if (pat.is_object() && pat.size() == 1 && pat.contains("Regex") && pat["Regex"].is_string()) {
      const std::string re = pat["Regex"].get<std::string>();
      step.regex = compile_regex(f, re, false, where + ".pattern.Regex");
      if (re == kGpt2Regex)
        step.fast = static_cast<int>(FastRegex::kGpt2);
      else if (re == kLlama3Regex)
        step.fast = static_cast<int>(FastRegex::kLlama3);
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
    step.kind = Step::Kind::kDigits;
    step.behavior = f.flag(p, "individual_digits", where + ".individual_digits", false) ? Behavior::kIsolated
                                                                                        : Behavior::kContiguous;
  } else if (type == "Metaspace") {
    // The legacy SentencePiece pre-tokenizer: spaces become the replacement character ("▁"), which
    // is prepended (prepend_scheme, or add_prefix_space in older files) and starts every pre-token.
    if (has(Step::Kind::kByteLevel))
      f.fail(where, "is Metaspace after a ByteLevel pre-tokenizer; forge reads one or the other");
    step.kind = Step::Kind::kMetaspace;
    const json& rep = f.get(p, "replacement", where + ".replacement");
    if (!rep.is_string()) f.fail(where + ".replacement", fmt::format("must be a string, not {}", rep.dump()));
    step.replacement = rep.get<std::string>();
    char32_t c;
    if (step.replacement.empty() || next_char(step.replacement, 0, &c) != step.replacement.size() || c == kIllFormed)
      f.fail(where + ".replacement", fmt::format("{} must be one character", rep.dump()));
    if (auto it = p.find("prepend_scheme"); it != p.end() && !it->is_null()) {
      const std::string scheme = it->is_string() ? it->get<std::string>() : it->dump();
      if (scheme == "always")
        step.prepend = Step::Prepend::kAlways;
      else if (scheme == "first")
        step.prepend = Step::Prepend::kFirst;
      else if (scheme == "never")
        step.prepend = Step::Prepend::kNever;
      else
        f.fail(where + ".prepend_scheme", fmt::format("\"{}\" is not one of always, first, never", scheme));
    } else {
      step.prepend = f.flag(p, "add_prefix_space", where + ".add_prefix_space", true) ? Step::Prepend::kAlways
                                                                                      : Step::Prepend::kNever;
    }
    step.split = f.flag(p, "split", where + ".split", true);
  } else if (type == "WhitespaceSplit") {
    step.kind = Step::Kind::kWhitespaceSplit;
    step.behavior = Behavior::kRemoved;
  } else {
    f.fail(where + ".type", fmt::format("\"{}\" is not supported (forge reads ByteLevel, Split, Digits, Metaspace, "
                                        "WhitespaceSplit and Sequence)",
                                        type));
  }
  steps_.push_back(std::move(step));
}

void PreTokenizer::split_piece(const Piece& p, size_t k, PreScratch& sc) const {
  const Step& step = steps_[k];
  piece_text(sc.segments[p.seg], p, &sc.word);
  const uint32_t total = static_cast<uint32_t>(sc.word.size());
  auto& m = sc.matches;
  m.clear();
  uint32_t prev = 0;
  auto add_match = [&](uint32_t b, uint32_t e) {
    if (prev != b) m.push_back({prev, b, false});
    m.push_back({b, e, true});
    prev = e;
  };
  if (step.fast != 0 && !p.mapped) {
    fast_matches(static_cast<FastRegex>(step.fast), sc.word, &m);
    prev = total;
  } else if (step.regex) {
    if (!sc.matchers[k]) {
      UErrorCode status = U_ZERO_ERROR;
      sc.matchers[k].reset(step.regex->matcher(status));
      if (U_FAILURE(status)) throw RuntimeError(fmt::format("ICU regex matcher: {}", u_errorName(status)));
    }
    regex_matches(*sc.matchers[k], sc.word, p.mapped, &sc.u16, &m);
    prev = total;
  } else if (step.kind == Step::Kind::kWhitespaceSplit) {  // every whitespace character is a match
    for (uint32_t i = 0; i < total;) {
      char32_t c;
      const auto n = static_cast<uint32_t>(next_char(sc.word, i, &c));
      if (is_space(c)) add_match(i, i + n);
      i += n;
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

// Metaspace::pre_tokenize on one piece: spaces become the replacement (aligned to the space), which
// is prepended (aligned to the first character) unless the piece starts with it; prepend_scheme
// "first" only prepends to a piece that starts the whole text. Then a pre-token starts at every
// replacement character (MergedWithNext).
void PreTokenizer::metaspace(const Piece& p, const Step& step, PreScratch& sc) const {
  const Segment seg = sc.segments[p.seg];  // a copy: segments grow below
  piece_text(seg, p, &sc.word);
  const std::string& rep = step.replacement;
  std::string text;
  std::vector<Span> align;
  text.reserve(sc.word.size() + 2 * rep.size());
  align.reserve(sc.word.size() + 2 * rep.size());
  const auto byte_span = [&](uint32_t j) {
    return span_at(seg, (p.prefix && j == 0) ? p.begin : p.begin + j - (p.prefix ? 1 : 0));
  };
  const std::string_view word = sc.word;
  const bool starts_with_rep = word.substr(0, rep.size()) == rep || word.front() == ' ';
  bool prepend = false;
  if (!starts_with_rep) {
    if (step.prepend == Step::Prepend::kAlways)
      prepend = true;
    else if (step.prepend == Step::Prepend::kFirst)
      prepend = byte_span(0).begin == 0;
  }
  if (prepend) {
    text += rep;
    align.insert(align.end(), rep.size(), byte_span(0));
  }
  for (uint32_t j = 0; j < word.size(); ++j) {
    if (word[j] == ' ') {
      text += rep;
      align.insert(align.end(), rep.size(), byte_span(j));
    } else {
      text += word[j];
      align.push_back(byte_span(j));
    }
  }
  sc.texts.push_back(std::move(text));
  sc.aligns.push_back(std::move(align));
  Segment out;
  out.text = sc.texts.back();
  out.align = sc.aligns.back().data();
  const auto index = static_cast<uint32_t>(sc.segments.size());
  sc.segments.push_back(out);
  const std::string_view t = out.text;
  uint32_t start = 0;
  if (step.split) {
    for (size_t pos = t.find(rep, 1); pos != std::string_view::npos; pos = t.find(rep, pos + rep.size())) {
      sc.next.push_back({index, start, static_cast<uint32_t>(pos)});
      start = static_cast<uint32_t>(pos);
    }
  }
  sc.next.push_back({index, start, static_cast<uint32_t>(t.size())});
}

void PreTokenizer::run(uint32_t seg, PreScratch& sc) const {
  sc.matchers.resize(steps_.size());
  sc.pieces.clear();
  sc.pieces.push_back({seg, 0, static_cast<uint32_t>(sc.segments[seg].text.size())});
  for (size_t k = 0; k < steps_.size(); ++k) {
    const Step& step = steps_[k];
    sc.next.clear();
    for (const Piece& p : sc.pieces) {
      if (step.kind == Step::Kind::kByteLevel) {
        Piece q = p;
        if (step.add_prefix_space && sc.segments[p.seg].text[p.begin] != ' ') q.prefix = true;
        if (step.regex)
          split_piece(q, k, sc);
        else
          sc.next.push_back(q);
      } else if (step.kind == Step::Kind::kMetaspace) {
        metaspace(p, step, sc);
      } else {
        split_piece(p, k, sc);
      }
    }
    if (step.kind == Step::Kind::kByteLevel)
      for (auto& q : sc.next) q.mapped = true;
    std::swap(sc.pieces, sc.next);
  }
}

}  // namespace forge::tok
