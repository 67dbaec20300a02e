#include "core/tokenizer/pattern.h"

#include <algorithm>

#include <fmt/format.h>

namespace forge::tok {

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

// Oniguruma (the library's engine) to ICU: the syntax of real tokenizer regexes is common to both;
// only \h / \H differ (a hex digit in Oniguruma, horizontal space in ICU).
static std::string onig_to_icu(const std::string& p) {
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

void regex_matches(icu::RegexMatcher& matcher, std::string_view text, bool mapped, Utf16* u16,
                   std::vector<MatchRange>* out) {
  out->clear();
  to_utf16(text, mapped, u16);
  const auto& units = u16->units;
  const auto& byte_at = u16->byte_at;
  icu::UnicodeString us(false, units.data(), static_cast<int32_t>(units.size()));
  matcher.reset(us);
  uint32_t prev = 0;
  int32_t last_end = -1;
  UErrorCode status = U_ZERO_ERROR;
  while (matcher.find()) {
    const int32_t s = matcher.start(status), e = matcher.end(status);
    // Oniguruma (the library's engine) refuses an empty match right where the last match ended.
    if (s == e && s == last_end) continue;
    last_end = e;
    if (prev != byte_at[s]) out->push_back({prev, byte_at[s], false});
    out->push_back({byte_at[s], byte_at[e], true});
    prev = byte_at[e];
  }
  const auto total = static_cast<uint32_t>(text.size());
  if (prev != total) out->push_back({prev, total, false});
}

}  // namespace forge::tok
