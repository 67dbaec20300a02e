// Hugging Face tokenizer.json: the loader and the pipeline of the library's
// TokenizerImpl::encode_single_sequence, with the ids, offsets and decoded text of the Python
// `tokenizers` package (checked against 0.23 by tests/data/test_tokenizer.cpp on fixtures from
// tests/fixtures/tokenizer_fixtures.py). forge reads:
//   - byte-level BPE (GPT-2, Llama-3 and the many models built the same way): a ByteLevel
//     pre-tokenizer and decoder;
//   - SentencePiece-style BPE (Llama-2, Mistral, TinyLlama, Gemma): BPE on characters with
//     byte_fallback, a Replace / Prepend normalizer or a Metaspace pre-tokenizer, and the
//     Replace / ByteFallback / Fuse / Strip / Metaspace decoders;
//   - Unigram models (T5-style SentencePiece unigram), with or without byte_fallback.
//
// One encode() runs the library's steps:
//   1. added tokens that are not `normalized` are cut out of the raw text (added_tokens.cpp); the
//      other pieces are normalized (normalizers.cpp) and `normalized` added tokens are cut out of
//      the normalized text;
//   2. the pre-tokenizer splits the remaining pieces (pre_tokenizers.cpp);
//   3. the model tokenizes each pre-token (bpe.cpp, unigram.cpp);
//   4. offsets go back to the original text through the alignments, and are trimmed of
//      whitespace when the post-processor asks for it (ByteLevel / RobertaProcessing with
//      trim_offsets), as the library does even without special tokens.
//
// Offsets are [begin, end) byte spans in the original UTF-8 text. A token that holds part of a
// multi-byte character (byte-level BPE and byte fallback can split one) gets the span of the whole
// character: that is what the library reports, its alignments being per character.
//
// Bytes that are not valid UTF-8 are encoded as bytes (the regexes see U+FFFD there); decode()
// turns invalid UTF-8 into U+FFFD per maximal ill-formed subsequence, as Rust's from_utf8_lossy
// (and Python's errors="replace") do.
#include <algorithm>
#include <filesystem>
#include <limits>
#include <memory>
#include <unordered_set>

#include <fmt/format.h>

#include "core/data/tokenizer.h"
#include "core/tokenizer/added_tokens.h"
#include "core/tokenizer/decoders.h"
#include "core/tokenizer/json_file.h"
#include "core/tokenizer/models.h"
#include "core/tokenizer/normalizers.h"
#include "core/tokenizer/pre_tokenizers.h"
#include "core/tokenizer/unicode.h"
#include "forge/error.h"

namespace fs = std::filesystem;

namespace forge {

namespace {

using tok::json;
using tok::JsonFile;

class HfTokenizer final : public Tokenizer {
 public:
  explicit HfTokenizer(const std::string& path);

  std::vector<int64_t> encode(const std::string& text,
                              std::vector<std::pair<size_t, size_t>>* offsets = nullptr) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return eos_; }
  int64_t pad_id() const override { return pad_; }
  std::string describe() const override {
    return fmt::format("Hugging Face {} tokenizer.json ({} ids) from {}", model_->name(), vocab_size_, path_);
  }

 private:
  void load_post_processor(const JsonFile& f, const json& p, const std::string& where);
  void load_special_ids(const fs::path& dir);
  int64_t token_to_id(const std::string& token) const;

  std::string path_;
  tok::AddedVocab added_;
  tok::Normalizer normalizer_;
  tok::PreTokenizer pre_tokenizer_;
  std::unique_ptr<tok::Model> model_;
  tok::Decoder decoder_;
  bool byte_level_ = false;  // ByteLevel pre-tokenizer and decoder
  std::vector<bool> trims_;  // one per trimming post-processor: its add_prefix_space
  // Per id: what decoding starts from (byte-level: the token's bytes; else its string), and the
  // whitespace the post-processor's trim counts at either end of the token string.
  std::vector<std::string> decode_as_;
  std::vector<uint8_t> decodable_, special_;
  std::vector<uint16_t> lead_spaces_, trail_spaces_;
  int64_t vocab_size_ = 0;
  int64_t bos_ = -1, eos_ = -1, pad_ = -1;
};

HfTokenizer::HfTokenizer(const std::string& path) : path_(path) {
  std::error_code ec;
  fs::path file(path);
  if (fs::is_directory(file, ec)) file /= "tokenizer.json";  // a model folder
  path_ = file.string();
  const JsonFile f(path_);
  const json root = f.parse();
  if (!root.is_object()) f.fail("the top level", "must be a JSON object (a Hugging Face tokenizer.json)");

  const json& model = f.get(root, "model", "model");
  if (!model.is_object()) f.fail("model", "must be an object");
  std::string type = "BPE";
  if (auto it = model.find("type"); it != model.end()) {
    if (!it->is_string() || (*it != "BPE" && *it != "Unigram"))
      f.fail("model.type", fmt::format("{} is not supported (forge reads model.type \"BPE\", byte-level or "
                                       "SentencePiece-style, and \"Unigram\"; not WordPiece or WordLevel)",
                                       it->dump()));
    type = it->get<std::string>();
  } else if (!model.contains("merges")) {
    f.fail("model.type", "is missing and the model has no merges (forge reads model.type \"BPE\" and \"Unigram\")");
  }

  added_.load(f, root);
  if (auto it = root.find("normalizer"); it != root.end() && !it->is_null()) normalizer_.load(f, *it, "normalizer");
  if (auto it = root.find("pre_tokenizer"); it != root.end() && !it->is_null())
    pre_tokenizer_.load(f, *it, "pre_tokenizer");
  if (auto it = root.find("post_processor"); it != root.end() && !it->is_null())
    load_post_processor(f, *it, "post_processor");
  const json* dec = nullptr;
  if (auto it = root.find("decoder"); it != root.end() && !it->is_null()) dec = &*it;
  if (dec != nullptr) decoder_.load(f, *dec, "decoder");

  // Byte-level BPE: a ByteLevel pre-tokenizer and a ByteLevel decoder, nothing of the other kind.
  byte_level_ = pre_tokenizer_.byte_level();
  const bool byte_level_decoder = decoder_.byte_level_only();
  if (byte_level_) {
    if (type != "BPE")
      f.fail("model.type", fmt::format("\"{}\" with a ByteLevel pre-tokenizer is not supported (forge reads "
                                       "byte-level BPE: model.type \"BPE\")",
                                       type));
    if (dec == nullptr) f.fail("decoder", "is null; forge reads byte-level BPE: decoder.type \"ByteLevel\"");
    if (!byte_level_decoder)
      f.fail("decoder", "is not ByteLevel, but the pre-tokenizer is; forge reads byte-level BPE with decoder.type "
                        "\"ByteLevel\"");
  } else if (byte_level_decoder) {
    f.fail("pre_tokenizer", "has no ByteLevel step, but the decoder is ByteLevel; forge reads byte-level BPE with "
                            "a ByteLevel pre-tokenizer and decoder");
  }
  model_ = type == "Unigram" ? tok::load_unigram(f, model) : tok::load_bpe(f, model, byte_level_);
  added_.build(normalizer_);

  // Per-id tables. The library resolves an id through the added tokens first (decoding the
  // normalized form of a normalized one), then the model.
  int64_t max_id = static_cast<int64_t>(model_->tokens().size()) - 1;
  for (const auto& [s, id] : model_->vocab()) max_id = std::max(max_id, id);
  for (const auto& a : added_.tokens()) max_id = std::max(max_id, a.id);
  vocab_size_ = max_id + 1;
  decode_as_.assign(vocab_size_, {});
  decodable_.assign(vocab_size_, 0);
  special_.assign(vocab_size_, 0);
  lead_spaces_.assign(vocab_size_, 0);
  trail_spaces_.assign(vocab_size_, 0);
  std::vector<const std::string*> token_of(model_->tokens().begin(), model_->tokens().end());
  token_of.resize(vocab_size_, nullptr);
  for (const auto& [s, id] : model_->vocab()) {
    // The post-processor's trim counts "Ġ" and whitespace at both ends of the token string (for
    // model tokens, the model's string of the id).
    lead_spaces_[id] = static_cast<uint16_t>(std::min<size_t>(tok::count_spaces(s, true), 0xFFFF));
    trail_spaces_[id] = static_cast<uint16_t>(std::min<size_t>(tok::count_spaces(s, false), 0xFFFF));
  }
  for (const auto& a : added_.tokens()) token_of[a.id] = &a.match;
  std::unordered_set<std::string> specials;
  for (const auto& a : added_.tokens())
    if (a.special) specials.insert(a.content);
  std::string bytes;
  for (int64_t id = 0; id < vocab_size_; ++id) {
    if (token_of[id] == nullptr) continue;
    const std::string& t = *token_of[id];
    decodable_[id] = 1;
    special_[id] = specials.count(t) > 0;
    decode_as_[id] = byte_level_ && tok::unmap_bytes(t, &bytes) ? bytes : t;
  }

  load_special_ids(fs::path(path_).parent_path());
}

void HfTokenizer::load_post_processor(const JsonFile& f, const json& p, const std::string& where) {
  // forge adds BOS/EOS itself; only the offset trimming matters here, which the library applies to
  // every encoding, special tokens or not.
  if (!p.is_object()) f.fail(where, "must be an object or null");
  auto type = p.find("type");
  if (type == p.end() || !type->is_string()) return;
  if (*type == "Sequence") {
    auto list = p.find("processors");
    if (list == p.end() || !list->is_array()) f.fail(where + ".processors", "must be a list");
    for (size_t i = 0; i < list->size(); ++i)
      load_post_processor(f, (*list)[i], fmt::format("{}.processors[{}]", where, i));
  } else if (*type == "ByteLevel" || *type == "RobertaProcessing") {
    if (f.flag(p, "trim_offsets", where + ".trim_offsets", true))
      trims_.push_back(f.flag(p, "add_prefix_space", where + ".add_prefix_space", true));
  }
}

void HfTokenizer::load_special_ids(const fs::path& dir) {
  // tokenizer_config.json (transformers' file) names them; else well-known special tokens.
  const fs::path config_path = dir / "tokenizer_config.json";
  json config;
  std::error_code ec;
  const bool has_config = fs::exists(config_path, ec);
  const JsonFile cf(config_path.string());
  if (has_config) {
    config = cf.parse();
    if (!config.is_object()) cf.fail("the top level", "must be a JSON object");
  }
  auto from_config = [&](const char* key) -> int64_t {
    if (!has_config) return -1;
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) return -1;
    const json* v = &*it;
    if (v->is_object()) {
      auto c = v->find("content");
      if (c == v->end()) cf.fail(key, "is an object without \"content\"");
      v = &*c;
    }
    if (!v->is_string()) cf.fail(key, fmt::format("must be a token string or {{\"content\": ...}}, not {}", v->dump()));
    const int64_t id = token_to_id(v->get<std::string>());
    if (id < 0) cf.fail(key, fmt::format("{} is not a token of {}", v->dump(), path_));
    return id;
  };
  auto well_known = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names)
      for (const auto& a : added_.tokens())
        if (a.special && a.content == n) return a.id;
    return -1;
  };
  bos_ = from_config("bos_token");
  if (bos_ < 0) bos_ = well_known({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  eos_ = from_config("eos_token");
  if (eos_ < 0) eos_ = well_known({"<|end_of_text|>", "<|eot_id|>", "</s>", "<|endoftext|>"});
  pad_ = from_config("pad_token");
  if (pad_ < 0) pad_ = well_known({"<pad>", "<|pad|>", "[PAD]"});
  if (pad_ < 0) pad_ = eos_;  // no pad token: pad with EOS (padding is masked out of the loss anyway)
}

int64_t HfTokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : added_.tokens())
    if (a.content == token) return a.id;
  auto it = model_->vocab().find(token);
  return it == model_->vocab().end() ? -1 : it->second;
}

std::vector<int64_t> HfTokenizer::encode(const std::string& text, std::vector<std::pair<size_t, size_t>>* offsets) const {
  if (text.size() >= std::numeric_limits<uint32_t>::max())
    throw InvalidArgument(fmt::format("{}: cannot encode a text of {} bytes (4 GiB at most)", path_, text.size()));
  std::vector<int64_t> ids;
  if (offsets) offsets->clear();
  tok::PreScratch sc;
  added_.split(text, normalizer_, sc);
  const auto& added = added_.tokens();

  // The post-processor's trim (ByteLevel process_offsets), in characters of the original text.
  auto emit = [&](int64_t id, uint32_t begin, uint32_t end, size_t lead, size_t trail) {
    if (offsets) {
      size_t b = begin, e = end;
      for (const bool add_prefix_space : trims_) {
        if (lead > 0) {
          size_t l = lead;
          if ((ids.empty() || b == 0) && add_prefix_space && l == 1) l = 0;  // the prefix space it added
          size_t nb = b;
          char32_t c;
          for (size_t k = 0; k < l && nb < text.size(); ++k) nb += tok::next_char(text, nb, &c);
          b = std::min(nb, e);
        }
        if (trail > 0) {
          size_t ne = e, k = 0;
          for (; k < trail && ne > 0; ++k) ne = tok::prev_char_start(text, ne);
          if (k == trail) e = std::max(ne, b);  // the library's "offsets.1 >= trailing_spaces"
        }
      }
      offsets->emplace_back(b, e);
    }
    ids.push_back(id);
  };

  tok::WordTokens tokens;
  const auto n_segments = static_cast<uint32_t>(sc.segments.size());  // Metaspace adds more below
  for (uint32_t si = 0; si < n_segments; ++si) {
    const tok::Segment seg = sc.segments[si];
    if (seg.added >= 0) {
      // The token string of an added token is the text it matched (with what lstrip/rstrip took).
      const bool trim = offsets && !trims_.empty();
      emit(added[seg.added].id, seg.span.begin, seg.span.end, trim ? tok::count_spaces(seg.text, true) : 0,
           trim ? tok::count_spaces(seg.text, false) : 0);
      continue;
    }
    pre_tokenizer_.run(si, sc);
    for (const tok::Piece& p : sc.pieces) {
      const tok::Segment& ps = sc.segments[p.seg];  // no segments are added while pieces are read
      tok::piece_text(ps, p, &sc.word);
      model_->tokenize(sc.word, &tokens);
      for (const auto& t : tokens) {
        uint32_t begin = 0, end = 0;
        if (offsets) {
          // Byte j of the pre-token -> original span of its character; the prefix space has the
          // span of the piece's first character (NormalizedString::prepend).
          auto span_of = [&](uint32_t j) {
            return tok::span_at(ps, (p.prefix && j == 0) ? p.begin : p.begin + j - (p.prefix ? 1 : 0));
          };
          begin = span_of(t.begin).begin;
          end = span_of(t.end - 1).end;
        }
        emit(t.id, begin, end, lead_spaces_[t.id], trail_spaces_[t.id]);
      }
    }
  }
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids) const {
  // The library skips ids it does not know, and special tokens; the ByteLevel decoder joins the
  // tokens' bytes and decodes them lossily.
  if (byte_level_) {
    std::string bytes;
    for (const int64_t id : ids) {
      if (id < 0 || id >= vocab_size_ || !decodable_[id] || special_[id]) continue;
      bytes += decode_as_[id];
    }
    return tok::utf8_lossy(bytes);
  }
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int64_t id : ids) {
    if (id < 0 || id >= vocab_size_ || !decodable_[id] || special_[id]) continue;
    tokens.push_back(decode_as_[id]);
  }
  return decoder_.decode(std::move(tokens));
}

}  // namespace

std::shared_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) { return std::make_shared<HfTokenizer>(path); }

}  // namespace forge
