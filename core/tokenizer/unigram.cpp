// model.type "Unigram" (SentencePiece unigram models: T5, ALBERT, XLNet and others), as the
// library's Unigram::encode_optimized and Unigram::tokenize:
//  - Viterbi over the pre-token's bytes, left to right: from each character start, every vocab
//    piece that the text there begins with (shortest first) improves the best path ending where
//    it ends, if strictly better; a character no one-character piece covers gets the unk node,
//    scored min(score) - 10. Ties keep the earlier path;
//  - the best path is read back; consecutive unk nodes are fused into one piece;
//  - a piece that is not in the vocab (fused unknown text) becomes "<0xNN>" tokens for its bytes,
//    each with the span of the whole piece (byte_fallback), or the unk id.
#include <algorithm>
#include <array>
#include <limits>

#include <fmt/format.h>

#include "core/tokenizer/models.h"
#include "core/tokenizer/unicode.h"
#include "forge/error.h"

namespace forge::tok {

namespace {

constexpr double kUnkPenalty = 10.0;

class Unigram final : public Model {
 public:
  Unigram(const JsonFile& f, const json& model);
  void tokenize(std::string_view word, WordTokens* out) const override;
  const char* name() const override { return "Unigram"; }

 private:
  int32_t child(int32_t node, unsigned char b) const {
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | b);
    return it == edges_.end() ? -1 : it->second;
  }
  std::string path_;
  std::vector<std::string> names_;  // by id
  std::vector<double> scores_;
  // A byte trie of the pieces: edges (node << 8 | byte) -> node; the id a node ends (last wins).
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> node_id_{-1};
  std::array<int32_t, 256> root_child_{};
  double min_score_ = std::numeric_limits<double>::infinity();
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false;
  std::array<int32_t, 256> fallback_{};
};

Unigram::Unigram(const JsonFile& f, const json& model) : path_(f.path()) {
  byte_fallback_ = f.flag(model, "byte_fallback", "model.byte_fallback", false);
  const json& vocab = f.get(model, "vocab", "model.vocab");
  if (!vocab.is_array()) f.fail("model.vocab", "must be a list of [piece, score] pairs");
  if (vocab.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    f.fail("model.vocab", "has too many pieces");
  scores_.reserve(vocab.size());
  names_.reserve(vocab.size());
  root_child_.fill(-1);
  for (size_t i = 0; i < vocab.size(); ++i) {
    const json& e = vocab[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
      f.fail(fmt::format("model.vocab[{}]", i), fmt::format("{} is not a [piece, score] pair", e.dump()));
    names_.push_back(e[0].get<std::string>());
    const std::string& piece = names_.back();
    const double score = e[1].get<double>();
    const auto id = static_cast<int32_t>(i);
    vocab_[piece] = id;  // a piece listed twice: the last id, as the library's token_to_ids
    scores_.push_back(score);
    min_score_ = std::min(min_score_, score);
    int32_t node = 0;
    for (unsigned char b : piece) {
      int32_t next = node == 0 ? root_child_[b] : child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(node_id_.size());
        node_id_.push_back(-1);
        if (node == 0)
          root_child_[b] = next;
        else
          edges_[(static_cast<uint64_t>(node) << 8) | b] = next;
      }
      node = next;
    }
    if (node != 0) node_id_[node] = vocab_[piece];
  }
  if (auto it = model.find("unk_id"); it != model.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() >= static_cast<int64_t>(vocab.size()))
      f.fail("model.unk_id",
             fmt::format("must be null or the index of a piece in model.vocab (0..{}), not {}",
                         static_cast<int64_t>(vocab.size()) - 1, it->dump()));
    unk_id_ = static_cast<int32_t>(it->get<int64_t>());
  }
  fallback_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    auto v = vocab_.find(fmt::format("<0x{:02X}>", b));
    if (v != vocab_.end()) fallback_[b] = static_cast<int32_t>(v->second);
  }
  // Model::id_to_token is the list itself.
  tokens_.reserve(names_.size());
  for (const std::string& name : names_) tokens_.push_back(&name);
}

void Unigram::tokenize(std::string_view word, WordTokens* out) const {
  out->clear();
  struct Node {
    int32_t id = -1;
    int64_t starts_at = -1;  // -1: no path ends here yet
    double score = 0.0;
  };
  thread_local std::vector<Node> best;
  const size_t size = word.size();
  best.assign(size + 1, Node{});
  const double unk_score = min_score_ - kUnkPenalty;
  for (size_t start = 0; start < size;) {
    const double here = best[start].score;
    char32_t c;
    const size_t mblen = next_char(word, start, &c);
    bool single = false;
    int32_t node = 0;
    for (size_t i = start; i < size; ++i) {
      const auto b = static_cast<unsigned char>(word[i]);
      node = node == 0 ? root_child_[b] : child(node, b);
      if (node < 0) break;
      const int32_t id = node_id_[node];
      if (id < 0) continue;
      const size_t end = i + 1;
      Node& target = best[end];
      const double candidate = scores_[id] + here;
      if (target.starts_at < 0 || candidate > target.score) {
        target.score = candidate;
        target.starts_at = static_cast<int64_t>(start);
        target.id = id;
      }
      if (end - start == mblen) single = true;
    }
    if (!single) {
      Node& target = best[start + mblen];
      const double candidate = unk_score + here;
      if (target.starts_at < 0 || candidate > target.score) {
        if (unk_id_ < 0)
          throw InvalidArgument(fmt::format("{}: the Unigram model has no unk_id and the text has a character it "
                                            "cannot encode: {}",
                                            path_, json(std::string(word.substr(start, mblen))).dump()));
        target.score = candidate;
        target.starts_at = static_cast<int64_t>(start);
        target.id = unk_id_;
      }
    }
    start += mblen;
  }
  // Back from the end: pieces as [begin, end) spans, unk nodes fused (Unigram's fuse_unk is always on).
  thread_local std::vector<std::pair<uint32_t, uint32_t>> pieces;
  thread_local std::vector<int32_t> ids;
  pieces.clear();
  ids.clear();
  for (size_t end = size; end > 0;) {
    const Node& n = best[end];
    const auto start = static_cast<size_t>(n.starts_at);
    if (unk_id_ >= 0 && n.id == unk_id_ && !ids.empty() && ids.back() == -2) {
      pieces.back().first = static_cast<uint32_t>(start);  // fused with the unk piece after it
    } else {
      pieces.emplace_back(static_cast<uint32_t>(start), static_cast<uint32_t>(end));
      ids.push_back(unk_id_ >= 0 && n.id == unk_id_ ? -2 : n.id);
    }
    end = start;
  }
  for (size_t k = pieces.size(); k-- > 0;) {
    const auto [b, e] = pieces[k];
    int32_t id = ids[k];
    if (id == -2) {  // the fused text: a piece if it happens to be one, else bytes or unk
      auto it = vocab_.find(std::string(word.substr(b, e - b)));
      if (it != vocab_.end()) {
        id = static_cast<int32_t>(it->second);
      } else if (byte_fallback_ && std::all_of(word.begin() + b, word.begin() + e, [&](char x) {
                   return fallback_[static_cast<unsigned char>(x)] >= 0;
                 })) {
        for (uint32_t i = b; i < e; ++i) out->push_back({fallback_[static_cast<unsigned char>(word[i])], b, e});
        continue;
      } else {
        id = unk_id_;
      }
    }
    out->push_back({id, b, e});
  }
}

}  // namespace

std::unique_ptr<Model> load_unigram(const JsonFile& f, const json& model) {
  return std::make_unique<Unigram>(f, model);
}

}  // namespace forge::tok
