#include "core/tokenizer/decoders.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/tokenizer/pattern.h"
#include "core/tokenizer/unicode.h"
#include "forge/error.h"

namespace forge::tok {

namespace {

std::vector<char32_t> chars_of(const std::string& s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) {
    char32_t c;
    i += next_char(s, i, &c);
    out.push_back(c == kIllFormed ? 0xFFFD : c);
  }
  return out;
}

std::string from_chars(const std::vector<char32_t>& cs, size_t b, size_t e) {
  std::string out;
  for (size_t i = b; i < e; ++i) append_utf8(out, cs[i]);
  return out;
}

// "<0xNN>" -> the byte (Rust's u8::from_str_radix on the two characters, which takes a "+" sign).
int byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto digit = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') return digit(t[4]);
  const int hi = digit(t[3]), lo = digit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    char32_t c;
    i += next_char(s, i, &c);
    if (c == kIllFormed) return false;
  }
  return true;
}

}  // namespace

bool Decoder::byte_level_only() const {
  return !steps_.empty() &&
         std::all_of(steps_.begin(), steps_.end(), [](const Step& s) { return s.kind == Step::Kind::kByteLevel; });
}

void Decoder::load(const JsonFile& f, const json& d, const std::string& where) {
  const std::string type = type_of(f, d, where);
  if (type == "Sequence") {
    const json& list = f.get(d, "decoders", where + ".decoders");
    if (!list.is_array() || list.empty()) f.fail(where + ".decoders", "must be a non-empty list");
    for (size_t i = 0; i < list.size(); ++i) load(f, list[i], fmt::format("{}.decoders[{}]", where, i));
    return;
  }
  Step step;
  if (type == "ByteLevel") {
    step.kind = Step::Kind::kByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = Step::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = Step::Kind::kFuse;
  } else if (type == "Replace") {
    step.kind = Step::Kind::kReplace;
    const json& pat = f.get(d, "pattern", where + ".pattern");
    step.content = f.string(d, "content", where + ".content");
    if (pat.is_object() && pat.size() == 1 && pat.contains("String") && pat["String"].is_string()) {
      step.pattern = pat["String"].get<std::string>();
      if (step.pattern.empty()) return;  // matches nothing
    } else if (pat.is_object() && pat.size() == 1 && pat.contains("Regex") && pat["Regex"].is_string()) {
      step.pattern = pat["Regex"].get<std::string>();
      step.regex = compile_regex(f, step.pattern, false, where + ".pattern.Regex");
    } else {
      f.fail(where + ".pattern", fmt::format("{} must be {{\"String\": \"...\"}} or {{\"Regex\": \"...\"}}", pat.dump()));
    }
  } else if (type == "Strip") {
    step.kind = Step::Kind::kStrip;
    const std::string content = f.string(d, "content", where + ".content");
    char32_t c = 0;
    if (content.empty() || next_char(content, 0, &c) != content.size() || c == kIllFormed)
      f.fail(where + ".content", fmt::format("{} must be one character", json(content).dump()));
    step.strip = c;
    for (const auto& [name, out] : {std::pair<const char*, size_t*>{"start", &step.start}, {"stop", &step.stop}}) {
      const json& v = f.get(d, name, where + "." + name);
      if (!v.is_number_unsigned()) f.fail(where + "." + name, fmt::format("must be a count, not {}", v.dump()));
      *out = v.get<size_t>();
    }
  } else if (type == "Metaspace") {
    step.kind = Step::Kind::kMetaspace;
    step.content = f.string(d, "replacement", where + ".replacement");
    char32_t c = 0;
    if (step.content.empty() || next_char(step.content, 0, &c) != step.content.size() || c == kIllFormed)
      f.fail(where + ".replacement", fmt::format("{} must be one character", json(step.content).dump()));
    if (auto it = d.find("prepend_scheme"); it != d.end() && !it->is_null()) {
      if (!it->is_string() || (*it != "always" && *it != "first" && *it != "never"))
        f.fail(where + ".prepend_scheme", fmt::format("{} is not one of always, first, never", it->dump()));
      step.prepend = *it != "never";
    } else {
      step.prepend = f.flag(d, "add_prefix_space", where + ".add_prefix_space", true);
    }
  } else {
    f.fail(where + ".type", fmt::format("\"{}\" is not supported (forge reads ByteLevel, Replace, ByteFallback, Fuse, "
                                        "Strip, Metaspace and Sequence)",
                                        type));
  }
  steps_.push_back(std::move(step));
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (steps_.empty()) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  std::vector<std::string> next;
  std::vector<MatchRange> matches;
  for (const Step& step : steps_) {
    next.clear();
    switch (step.kind) {
      case Step::Kind::kByteLevel: {  // every token's bytes (its own UTF-8 when not in the alphabet)
        std::string bytes, b;
        for (const auto& t : tokens) bytes += unmap_bytes(t, &b) ? b : t;
        next.push_back(utf8_lossy(bytes));
        break;
      }
      case Step::Kind::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        next.push_back(std::move(all));
        break;
      }
      case Step::Kind::kByteFallback: {  // runs of "<0xNN>": their UTF-8, else one U+FFFD a byte
        std::string bytes;
        size_t count = 0;
        auto flush = [&] {
          if (count == 0) return;
          if (valid_utf8(bytes)) {
            next.push_back(bytes);
          } else {
            for (size_t k = 0; k < count; ++k) next.emplace_back("\xEF\xBF\xBD");
          }
          bytes.clear();
          count = 0;
        };
        for (auto& t : tokens) {
          const int b = byte_token(t);
          if (b >= 0) {
            bytes += static_cast<char>(b);
            ++count;
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        break;
      }
      case Step::Kind::kReplace: {
        std::unique_ptr<icu::RegexMatcher> matcher;
        if (step.regex) {
          UErrorCode status = U_ZERO_ERROR;
          matcher.reset(step.regex->matcher(status));
          if (U_FAILURE(status)) throw RuntimeError(fmt::format("ICU regex matcher: {}", u_errorName(status)));
        }
        Utf16 u16;
        for (const auto& t : tokens) {
          std::string out;
          if (!matcher) {
            size_t prev = 0;
            for (size_t pos = t.find(step.pattern); pos != std::string::npos; pos = t.find(step.pattern, prev)) {
              out.append(t, prev, pos - prev);
              out += step.content;
              prev = pos + step.pattern.size();
            }
            out.append(t, prev, std::string::npos);
          } else {
            regex_matches(*matcher, t, false, &u16, &matches);
            for (const auto& r : matches) {
              if (r.match)
                out += step.content;
              else
                out.append(t, r.begin, r.end - r.begin);
            }
          }
          next.push_back(std::move(out));
        }
        break;
      }
      case Step::Kind::kStrip: {
        for (const auto& t : tokens) {
          const std::vector<char32_t> cs = chars_of(t);
          size_t start_cut = 0;
          for (size_t i = 0; i < std::min(step.start, cs.size()) && cs[i] == step.strip; ++i) start_cut = i + 1;
          size_t stop_cut = cs.size();
          for (size_t i = 0; i < std::min(step.stop, cs.size() - start_cut); ++i) {
            const size_t index = cs.size() - i - 1;
            if (cs[index] != step.strip) break;
            stop_cut = index;
          }
          next.push_back(from_chars(cs, start_cut, stop_cut));
        }
        break;
      }
      case Step::Kind::kMetaspace: {  // the replacement is a space, and none in the first token
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string out;
          const std::string& t = tokens[i];
          for (size_t pos = 0; pos < t.size();) {
            if (t.compare(pos, step.content.size(), step.content) == 0) {
              if (!(i == 0 && step.prepend)) out += ' ';
              pos += step.content.size();
            } else {
              out += t[pos++];
            }
          }
          next.push_back(std::move(out));
        }
        break;
      }
    }
    std::swap(tokens, next);
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

}  // namespace forge::tok
