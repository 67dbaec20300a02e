// Small string helpers used across the core.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "forge/export.h"

namespace forge::util {

// Levenshtein distance.
FORGE_API size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word`, if it is close enough to be a likely typo; "" otherwise.
FORGE_API std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates);
FORGE_API std::string join(const std::vector<std::string>& items, std::string_view sep);
// `"a", "b"` style list.
FORGE_API std::string quoted_list(const std::vector<std::string>& items);
// Unix shell wildcard match as Python's fnmatch.fnmatchcase: '*' matches dots too.
FORGE_API bool fnmatch(const std::string& pattern, const std::string& name);
FORGE_API bool starts_with(std::string_view s, std::string_view prefix);
FORGE_API bool ends_with(std::string_view s, std::string_view suffix);
FORGE_API std::vector<std::string> split(std::string_view s, char sep);
// "1.2 KiB", "3.4 GiB"
FORGE_API std::string human_bytes(double bytes);
// "1h02m", "3m04s", "12.3s"
FORGE_API std::string human_duration(double seconds);
// Human count: 1234567 -> "1.23M"
FORGE_API std::string human_count(double n);

}  // namespace forge::util
