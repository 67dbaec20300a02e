#include "core/tokenizer/normalizers.h"

#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf16.h>

#include <algorithm>

#include <fmt/format.h>

#include "core/tokenizer/pattern.h"
#include "core/tokenizer/unicode.h"
#include "forge/error.h"

namespace forge::tok {

namespace {

// One Unicode normalizer. ICU gives the data; the algorithm is the library's own
// (unicode-normalization-alignments), because its alignments decide the offsets: every output
// character carries a "change" (0: replaces the next original character, +1: inserted after it,
// -n: replaces it and removes n more), which NormalizedString::transform turns into spans.
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

// Spans of `in`'s characters, byte by byte, for a text that the normalizers start to change.
std::vector<Span> identity_align(std::string_view in, uint32_t base) {
  std::vector<Span> align;
  align.reserve(in.size());
  for (size_t i = 0; i < in.size();) {
    char32_t c;
    const size_t n = next_char(in, i, &c);
    align.insert(align.end(), n, Span{base + static_cast<uint32_t>(i), base + static_cast<uint32_t>(i + n)});
    i += n;
  }
  return align;
}

}  // namespace

void Normalizer::load(const JsonFile& f, const json& n, const std::string& where) {
  const std::string type = type_of(f, n, where);
  if (type == "Sequence") {
    const json& list = f.get(n, "normalizers", where + ".normalizers");
    if (!list.is_array()) f.fail(where + ".normalizers", "must be a list");
    for (size_t i = 0; i < list.size(); ++i) load(f, list[i], fmt::format("{}.normalizers[{}]", where, i));
    return;
  }
  Step step;
  if (type == "Replace") {
    step.kind = Step::Kind::kReplace;
    const json& pat = f.get(n, "pattern", where + ".pattern");
    step.text = f.string(n, "content", where + ".content");
    if (pat.is_object() && pat.size() == 1 && pat.contains("String") && pat["String"].is_string()) {
      step.pattern = pat["String"].get<std::string>();
      if (step.pattern.empty()) return;  // the library finds no match for an empty string
    } else if (pat.is_object() && pat.size() == 1 && pat.contains("Regex") && pat["Regex"].is_string()) {
      step.pattern = pat["Regex"].get<std::string>();
      step.regex = compile_regex(f, step.pattern, false, where + ".pattern.Regex");
    } else {
      f.fail(where + ".pattern", fmt::format("{} must be {{\"String\": \"...\"}} or {{\"Regex\": \"...\"}}", pat.dump()));
    }
    steps_.push_back(std::move(step));
    return;
  }
  if (type == "Prepend") {
    step.kind = Step::Kind::kPrepend;
    step.text = f.string(n, "prepend", where + ".prepend");
    if (!step.text.empty()) steps_.push_back(std::move(step));
    return;
  }
  if (type == "Strip") {
    step.kind = Step::Kind::kStrip;
    step.left = f.flag(n, "strip_left", where + ".strip_left", false);
    step.right = f.flag(n, "strip_right", where + ".strip_right", false);
    if (step.left || step.right) steps_.push_back(std::move(step));
    return;
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = nullptr;
  const bool compat = type == "NFKC" || type == "NFKD";
  step.uni.compose = type == "NFC" || type == "NFKC";
  if (type == "NFC")
    norm = icu::Normalizer2::getNFCInstance(status);
  else if (type == "NFD")
    norm = icu::Normalizer2::getNFDInstance(status);
  else if (type == "NFKC")
    norm = icu::Normalizer2::getNFKCInstance(status);
  else if (type == "NFKD")
    norm = icu::Normalizer2::getNFKDInstance(status);
  else
    f.fail(where + ".type", fmt::format("\"{}\" is not supported (forge reads NFC, NFD, NFKC, NFKD, Replace, Prepend, "
                                        "Strip and Sequence)",
                                        type));
  step.uni.check = norm;
  step.uni.decompose =
      compat ? icu::Normalizer2::getNFKDInstance(status) : icu::Normalizer2::getNFDInstance(status);
  step.uni.composer = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status) || !step.uni.check || !step.uni.decompose || !step.uni.composer)
    f.fail(where + ".type", fmt::format("\"{}\": ICU has no such normalizer ({})", type, u_errorName(status)));
  steps_.push_back(std::move(step));
}

bool Normalizer::run(std::string_view in, std::string* out, std::vector<Span>* align, uint32_t base) const {
  if (steps_.empty() || in.empty()) return false;
  std::string cur, next;
  std::vector<Span> cur_align, next_align;
  std::vector<MatchRange> matches;
  bool changed = false;
  for (const Step& step : steps_) {
    const std::string_view text = changed ? std::string_view(cur) : in;
    if (text.empty()) break;  // nothing changes an empty text
    next.clear();
    next_align.clear();
    switch (step.kind) {
      case Step::Kind::kUnicode: {
        UErrorCode status = U_ZERO_ERROR;
        const bool done = step.uni.check->isNormalized(
            icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size()))), status);
        if (U_SUCCESS(status) && done) continue;  // the library's result is the text itself, aligned 1:1
        if (!changed) cur_align = identity_align(in, base);
        unicode_normalize(text, cur_align, step.uni, &next, &next_align);
        break;
      }
      case Step::Kind::kReplace: {
        // NormalizedString::replace: every match becomes the content, each of its characters
        // aligned to the last character of the match (an insertion after the removed ones).
        matches.clear();
        if (!step.regex) {
          size_t prev = 0;
          for (size_t pos = text.find(step.pattern); pos != std::string_view::npos;
               pos = text.find(step.pattern, pos)) {
            if (prev != pos) matches.push_back({static_cast<uint32_t>(prev), static_cast<uint32_t>(pos), false});
            matches.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + step.pattern.size()), true});
            pos += step.pattern.size();
            prev = pos;
          }
          if (matches.empty()) continue;
          if (prev != text.size())
            matches.push_back({static_cast<uint32_t>(prev), static_cast<uint32_t>(text.size()), false});
        } else {
          UErrorCode status = U_ZERO_ERROR;
          std::unique_ptr<icu::RegexMatcher> matcher(step.regex->matcher(status));
          if (U_FAILURE(status)) throw RuntimeError(fmt::format("ICU regex matcher: {}", u_errorName(status)));
          Utf16 u16;
          regex_matches(*matcher, text, false, &u16, &matches);
          if (std::none_of(matches.begin(), matches.end(), [](const MatchRange& r) { return r.match; })) continue;
        }
        if (!changed) cur_align = identity_align(in, base);
        for (const MatchRange& r : matches) {
          if (!r.match) {
            next.append(text.data() + r.begin, r.end - r.begin);
            next_align.insert(next_align.end(), cur_align.begin() + r.begin, cur_align.begin() + r.end);
          } else {
            const Span a = r.end > 0 ? cur_align[r.end - 1] : Span{base, base};
            next += step.text;
            next_align.insert(next_align.end(), step.text.size(), a);
          }
        }
        break;
      }
      case Step::Kind::kPrepend: {
        // NormalizedString::prepend: the new characters share the first character's alignment.
        if (!changed) cur_align = identity_align(in, base);
        next = step.text;
        next.append(text);
        next_align.assign(step.text.size(), cur_align[0]);
        next_align.insert(next_align.end(), cur_align.begin(), cur_align.end());
        break;
      }
      case Step::Kind::kStrip: {
        size_t b = 0, e = text.size();
        if (step.left) {
          while (b < e) {
            char32_t c;
            const size_t n = next_char(text, b, &c);
            if (!is_space(c)) break;
            b += n;
          }
        }
        if (step.right) {
          while (e > b) {
            const size_t p = prev_char_start(text, e);
            char32_t c;
            next_char(text, p, &c);
            if (!is_space(c)) break;
            e = p;
          }
        }
        if (b == 0 && e == text.size()) continue;
        if (!changed) cur_align = identity_align(in, base);
        next.assign(text.substr(b, e - b));
        next_align.assign(cur_align.begin() + b, cur_align.begin() + e);
        break;
      }
    }
    std::swap(cur, next);
    std::swap(cur_align, next_align);
    changed = true;
  }
  if (!changed) return false;
  *out = std::move(cur);
  *align = std::move(cur_align);
  return true;
}

}  // namespace forge::tok
