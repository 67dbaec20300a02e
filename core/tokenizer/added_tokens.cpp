#include "core/tokenizer/added_tokens.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "core/tokenizer/unicode.h"

namespace forge::tok {

void AddedVocab::load(const JsonFile& f, const json& root) {
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
}

void AddedVocab::build(const Normalizer& normalizer) {
  for (size_t i = 0; i < added_.size(); ++i) {
    AddedToken& a = added_[i];
    a.match = a.content;
    if (a.normalized && !normalizer.empty()) {
      std::string out;
      std::vector<Span> align;
      if (normalizer.run(a.content, &out, &align, 0)) a.match = out;
    }
    (a.normalized ? normalized_trie_ : raw_trie_).add(a.match, static_cast<int32_t>(i));
  }
}

// AddedVocabulary::find_matches: the added tokens of one trie in `s`, and the text between them.
void AddedVocab::find(std::string_view s, const Trie& trie, std::vector<Part>* out) const {
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

void AddedVocab::split(const std::string& text, const Normalizer& normalizer, PreScratch& sc) const {
  std::vector<Part> raw, norm;
  find(text, raw_trie_, &raw);
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
    if (normalizer.run(piece, &normalized, &align, static_cast<uint32_t>(part.begin))) {
      sc.texts.push_back(std::move(normalized));
      sc.aligns.push_back(std::move(align));
      whole.text = sc.texts.back();
      whole.align = sc.aligns.back().data();
      whole.base = 0;
    }
    find(whole.text, normalized_trie_, &norm);
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

}  // namespace forge::tok
