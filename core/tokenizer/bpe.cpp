// model.type "BPE", as the library's BPE::tokenize, in two flavours:
//  - byte-level (the pre-tokenizer has a ByteLevel step): tokens are byte strings in GPT-2's
//    alphabet. forge converts the vocab to raw bytes instead ("Ġthe" is the key " the") and runs
//    BPE on the pre-token's bytes: no per-call mapping, and offsets are byte arithmetic;
//  - on characters (SentencePiece-style: Llama-2, Mistral, Gemma): a pre-token's symbols start as
//    its characters; a character missing from the vocab becomes its UTF-8 bytes as "<0xNN>" tokens
//    (byte_fallback) or the unk token (fused with its neighbours when fuse_unk).
// Then the lowest-rank merge goes first, leftmost among equals.
#include <algorithm>
#include <array>
#include <limits>
#include <mutex>

#include <fmt/format.h>

#include "core/tokenizer/models.h"
#include "core/tokenizer/unicode.h"

namespace forge::tok {

void Model::index_tokens() {
  int64_t max_id = -1;
  for (const auto& [s, id] : vocab_) max_id = std::max(max_id, id);
  tokens_.assign(static_cast<size_t>(max_id + 1), nullptr);
  for (const auto& [s, id] : vocab_)
    if (tokens_[id] == nullptr) tokens_[id] = &s;
}

namespace {

class Bpe final : public Model {
 public:
  Bpe(const JsonFile& f, const json& model, bool byte_level);
  void tokenize(std::string_view word, WordTokens* out) const override;
  const char* name() const override { return "BPE"; }

 private:
  void merge_word(std::string_view word, WordTokens* out) const;
  int32_t symbol_id(std::string_view s) const {
    auto it = bpe_vocab_.find(s);
    return it == bpe_vocab_.end() ? -1 : it->second;
  }

  bool byte_level_;
  StringMap<int32_t> bpe_vocab_;        // byte-level: entries by their bytes; else by their string
  std::array<int32_t, 256> byte_id_{};  // byte-level: the one-byte tokens; else one-byte characters
  std::array<int32_t, 256> fallback_{};  // "<0xNN>" (byte_fallback)
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // (left, right) -> (rank, merged)
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
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

Bpe::Bpe(const JsonFile& f, const json& model, bool byte_level) : byte_level_(byte_level) {
  f.want_null(model, "continuing_subword_prefix", "model.continuing_subword_prefix",
              "forge reads BPE without a subword prefix (null), as GPT-2, Llama and Mistral use");
  f.want_null(model, "end_of_word_suffix", "model.end_of_word_suffix",
              "forge reads BPE without an end-of-word suffix (null), as GPT-2, Llama and Mistral use");
  byte_fallback_ = f.flag(model, "byte_fallback", "model.byte_fallback", false);
  if (byte_fallback_ && byte_level)
    f.fail("model.byte_fallback",
           "is true with a ByteLevel pre-tokenizer; byte fallback belongs to SentencePiece-style BPE (no ByteLevel), "
           "byte-level BPE has every byte in its vocab");
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
  fallback_.fill(-1);
  std::string bytes;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > std::numeric_limits<int32_t>::max())
      f.fail(fmt::format("model.vocab[{}]", json(it.key()).dump()),
             fmt::format("must be a non-negative integer id, not {}", v.dump()));
    const auto id = static_cast<int32_t>(v.get<int64_t>());
    vocab_[it.key()] = id;
    if (byte_level) {
      if (unmap_bytes(it.key(), &bytes) && !bytes.empty()) {
        if (bytes.size() == 1) byte_id_[static_cast<unsigned char>(bytes[0])] = id;
        bpe_vocab_[bytes] = id;
      }
    } else {
      bpe_vocab_[it.key()] = id;
      if (it.key().size() == 1) byte_id_[static_cast<unsigned char>(it.key()[0])] = id;
    }
  }
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      auto v = vocab_.find(fmt::format("<0x{:02X}>", b));
      if (v != vocab_.end()) fallback_[b] = static_cast<int32_t>(v->second);
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
    // Byte-level: only merges of byte-level tokens can ever apply (symbols start as single bytes).
    if (byte_level && (!unmap_bytes(left, &left_bytes) || !unmap_bytes(right, &right_bytes))) continue;
    merges_[(static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b)] = {r, merged};
  }
  index_tokens();
}

// BPE::merge_word and Word::merge_all: the lowest-rank merge goes first, leftmost among equals (a
// queue entry whose pair has changed since is stale and skipped).
void Bpe::merge_word(std::string_view word, WordTokens* out) const {
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
  // Symbols missing from the vocab become the unk token (fused when fuse_unk), or vanish without one.
  uint32_t unk_len = 0;
  auto add = [&](int32_t id, uint32_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, len});
    if (n > 0) symbols[n - 1].next = n;
  };
  auto unknown = [&](uint32_t len) {
    if (unk_id_ < 0) return;
    if (unk_len > 0 && !fuse_unk_) {
      add(unk_id_, unk_len);
      unk_len = 0;
    }
    unk_len += len;
  };
  if (byte_level_) {
    for (unsigned char b : word) {
      const int32_t id = byte_id_[b];
      if (id >= 0) {
        if (unk_len > 0) add(unk_id_, unk_len);
        unk_len = 0;
        add(id, 1);
      } else {
        unknown(1);
      }
    }
  } else {
    for (size_t i = 0; i < word.size();) {
      char32_t c;
      const size_t n = next_char(word, i, &c);
      const int32_t id = n == 1 ? byte_id_[static_cast<unsigned char>(word[i])] : symbol_id(word.substr(i, n));
      if (id >= 0) {
        if (unk_len > 0) add(unk_id_, unk_len);
        unk_len = 0;
        add(id, static_cast<uint32_t>(n));
      } else if (byte_fallback_ && std::all_of(word.begin() + i, word.begin() + i + n, [&](char b) {
                   return fallback_[static_cast<unsigned char>(b)] >= 0;
                 })) {
        // As the library: the byte tokens go in before an unk still pending.
        for (size_t k = i; k < i + n; ++k) add(fallback_[static_cast<unsigned char>(word[k])], 1);
      } else {
        unknown(static_cast<uint32_t>(n));
      }
      i += n;
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
  uint32_t pos = 0;
  for (const auto& s : symbols) {
    if (s.len == 0) continue;
    out->push_back({s.id, pos, pos + s.len});
    pos += s.len;
  }
}

void Bpe::tokenize(std::string_view word, WordTokens* out) const {
  if (ignore_merges_) {
    auto it = bpe_vocab_.find(word);
    if (it != bpe_vocab_.end()) {
      out->assign(1, {it->second, 0, static_cast<uint32_t>(word.size())});
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

}  // namespace

std::unique_ptr<Model> load_bpe(const JsonFile& f, const json& model, bool byte_level) {
  return std::make_unique<Bpe>(f, model, byte_level);
}

}  // namespace forge::tok
