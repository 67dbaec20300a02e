// The library's Pattern (tokenizer/pattern.rs) and NormalizedString::split: regex matches as byte
// ranges that cover a text, and what each split behaviour keeps of them.
#pragma once

#include <unicode/regex.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tokenizer/json_file.h"
#include "core/tokenizer/unicode.h"

namespace forge::tok {

// One run of a pattern over a piece, as HF's Pattern::find_matches: ordered ranges covering it.
struct MatchRange {
  uint32_t begin, end;
  bool match;
};

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// NormalizedString::split: which ranges a behaviour keeps (empty ones are dropped by the caller).
void apply_behavior(const std::vector<MatchRange>& m, Behavior behavior,
                    std::vector<std::pair<uint32_t, uint32_t>>* out);

// A regex of the file (Oniguruma syntax, compiled by ICU), or a literal string; a bad one is a
// FormatError naming `key`.
std::unique_ptr<icu::RegexPattern> compile_regex(const JsonFile& f, const std::string& pattern, bool literal,
                                                 const std::string& key);

// The matches of `matcher`'s pattern in `text` (mapped: ByteLevel's alphabet, one character a
// byte), with the unmatched ranges between them: the whole of `text` is covered. Empty matches
// right where the last one ended are skipped, as Oniguruma does.
void regex_matches(icu::RegexMatcher& matcher, std::string_view text, bool mapped, Utf16* u16,
                   std::vector<MatchRange>* out);

}  // namespace forge::tok
