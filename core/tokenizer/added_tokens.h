// Added tokens of tokenizer.json (AddedVocabulary): cut out of the text before the normalizer
// (normalized: false) or after it (normalized: true), leftmost-longest, with single_word, lstrip and
// rstrip as the library applies them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tokenizer/json_file.h"
#include "core/tokenizer/normalizers.h"
#include "core/tokenizer/pre_tokenizers.h"

namespace forge::tok {

struct AddedToken {
  int64_t id = -1;
  std::string content;
  std::string match;  // what is searched: content, or its normalized form for `normalized` tokens
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
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

class AddedVocab {
 public:
  // root["added_tokens"]; ids as the file gives them (the library re-derives them and warns when
  // they differ).
  void load(const JsonFile& f, const json& root);
  // The tries, once the normalizer is known (normalized tokens are searched for in normalized form).
  void build(const Normalizer& normalizer);
  const std::vector<AddedToken>& tokens() const { return added_; }
  // The text as segments (sc.segments): added tokens, and normalized pieces between them.
  void split(const std::string& text, const Normalizer& normalizer, PreScratch& sc) const;

 private:
  struct Part {
    int32_t added;  // -1: text between added tokens
    size_t begin, end;
  };
  void find(std::string_view s, const Trie& trie, std::vector<Part>* out) const;
  std::vector<AddedToken> added_;
  Trie raw_trie_, normalized_trie_;
};

}  // namespace forge::tok
