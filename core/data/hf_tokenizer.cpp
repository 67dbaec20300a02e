// Hugging Face tokenizer.json, byte-level BPE (GPT-2 and Llama-3 style).
//
// The pipeline, as the `tokenizers` library runs it:
//   1. the text is split on added tokens (leftmost-longest; special or not);
//   2. each remaining piece is normalised (NFC/NFD/NFKC/NFKD through ICU);
//   3. pre-tokenised: ByteLevel (optional prefix space, the GPT-2 regex),
//      Split (a regex run by ICU, or a literal; every split behaviour), Digits,
//      or a Sequence of these;
//   4. each pre-token's bytes are mapped to the GPT-2 byte-level alphabet and
//      merged by BPE rank (or taken whole with ignore_merges when the vocab
//      has it).
// Offsets are byte spans in the original text, widened to whole UTF-8
// characters (as the library's character offsets are). When a normaliser
// changes a piece, its tokens get the piece's span.
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/unistr.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/data/tokenizer.h"
#include "forge/error.h"

using json = nlohmann::json;

namespace forge {

namespace {

// GPT-2's byte <-> unicode table: printable bytes map to themselves, the rest
// to code points from 256 up, so every byte is a visible character.
struct ByteMap {
  std::array<std::string, 256> to_char;            // byte -> UTF-8 of its character
  std::unordered_map<std::string, uint8_t> to_byte;  // UTF-8 character -> byte
  ByteMap() {
    std::vector<int> printable;
    for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool kept = std::find(printable.begin(), printable.end(), b) != printable.end();
      UChar32 cp = kept ? b : 256 + extra++;
      std::string utf8;
      icu::UnicodeString(cp).toUTF8String(utf8);
      to_char[b] = utf8;
      to_byte[utf8] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// A piece of text and its byte span in the original string.
struct Piece {
  std::string text;
  size_t begin = 0, end = 0;
  bool exact = true;  // text's bytes correspond one to one with [begin, end)
};

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

// Byte offset of each UTF-16 unit boundary of `s` (size = length() + 1).
std::vector<size_t> utf16_to_utf8(const icu::UnicodeString& s) {
  std::vector<size_t> map(static_cast<size_t>(s.length()) + 1, 0);
  size_t bytes = 0;
  for (int32_t i = 0; i < s.length();) {
    UChar32 cp = s.char32At(i);
    int32_t units = U16_LENGTH(cp);
    size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (int32_t k = 0; k < units; ++k) map[static_cast<size_t>(i + k)] = bytes;
    bytes += n;
    i += units;
  }
  map[static_cast<size_t>(s.length())] = bytes;
  return map;
}

struct PreTokenizer {
  std::string type;  // ByteLevel, Split, Digits
  bool add_prefix_space = false;
  bool use_regex = true;
  std::unique_ptr<icu::RegexPattern> regex;  // Split (regex) and ByteLevel
  std::string literal;                       // Split (string)
  std::string behavior = "Isolated";
  bool invert = false;
  bool individual_digits = false;
};

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
    return fmt::format("Hugging Face BPE tokenizer.json ({} ids) from {}", vocab_size_, path_);
  }

 private:
  struct Added {
    std::string content;
    int64_t id;
    bool special, single_word, lstrip, rstrip;
  };
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw FormatError(fmt::format("{}: {}: {}", path_, key, what));
  }
  void load_normalizer(const json& n, const std::string& key);
  void load_pre_tokenizer(const json& p, const std::string& key);
  std::vector<Piece> split_added(const std::string& text, std::vector<int64_t>& added_ids) const;
  std::string normalize(const std::string& s) const;
  std::vector<Piece> pre_tokenize(std::vector<Piece> pieces) const;
  std::vector<Piece> apply(const PreTokenizer& p, const Piece& piece) const;
  const std::vector<std::pair<int64_t, size_t>>& bpe(const std::string& word) const;
  int64_t special_id(const json& cfg, const char* key, std::initializer_list<const char*> names) const;

  std::string path_;
  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<int64_t, std::string> id_to_token_;
  std::unordered_map<std::string, int> merge_rank_;  // "a\x01b"
  bool ignore_merges_ = false;
  int64_t unk_ = -1;
  std::vector<const icu::Normalizer2*> normalizers_;
  std::vector<PreTokenizer> pre_;
  std::vector<Added> added_;
  std::unordered_map<int64_t, const Added*> added_by_id_;
  int64_t vocab_size_ = 0, bos_ = -1, eos_ = -1, pad_ = -1;
  // word -> (id, bytes covered), shared by threads
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<std::pair<int64_t, size_t>>> cache_;
};

HfTokenizer::HfTokenizer(const std::string& path) : path_(path) {
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: cannot open the tokenizer file (data.tokenizer_path)", path));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  if (!j.is_object() || !j.contains("model")) fail("model", "missing; is this a Hugging Face tokenizer.json?");
  const json& m = j["model"];
  if (m.value("type", "") != "BPE")
    fail("model.type", fmt::format("\"{}\" is not supported (forge reads byte-level BPE tokenizers)", m.value("type", "")));
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && m[k] != "")
      fail(fmt::format("model.{}", k), "is set; forge reads byte-level BPE without subword markers");
  if (m.value("byte_fallback", false)) fail("model.byte_fallback", "true is not supported (byte-level BPE needs none)");
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    fail("model.dropout", "BPE dropout makes encoding random; forge needs null");
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail("model.vocab", "missing or not an object");
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer()) fail("model.vocab", fmt::format("the id of \"{}\" is not an integer", it.key()));
    int64_t id = it.value().get<int64_t>();
    vocab_[it.key()] = id;
    id_to_token_[id] = it.key();
    vocab_size_ = std::max(vocab_size_, id + 1);
  }
  if (!m.contains("merges") || !m["merges"].is_array()) fail("model.merges", "missing or not a list");
  int rank = 0;
  for (const auto& merge : m["merges"]) {
    std::string a, b;
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      auto sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size())
        fail("model.merges", fmt::format("entry {} (\"{}\") is not \"left right\"", rank, s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      a = merge[0].get<std::string>();
      b = merge[1].get<std::string>();
    } else {
      fail("model.merges", fmt::format("entry {} is neither \"left right\" nor [left, right]", rank));
    }
    merge_rank_.emplace(a + '\x01' + b, rank++);
  }
  ignore_merges_ = m.value("ignore_merges", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = vocab_.find(m["unk_token"].get<std::string>());
    if (it != vocab_.end()) unk_ = it->second;
  }
  if (j.contains("normalizer") && !j["normalizer"].is_null()) load_normalizer(j["normalizer"], "normalizer");
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) load_pre_tokenizer(j["pre_tokenizer"], "pre_tokenizer");
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    const std::string t = j["decoder"].value("type", "");
    bool ok = t == "ByteLevel";
    if (t == "Sequence")
      for (const auto& d : j["decoder"].value("decoders", json::array())) ok = ok || d.value("type", "") == "ByteLevel";
    if (!ok) fail("decoder.type", fmt::format("\"{}\" is not supported (forge decodes byte-level BPE)", t));
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& a : j["added_tokens"]) {
      if (!a.contains("id") || !a.contains("content")) fail("added_tokens", "an entry needs id and content");
      added_.push_back(Added{a["content"].get<std::string>(), a["id"].get<int64_t>(), a.value("special", false),
                             a.value("single_word", false), a.value("lstrip", false), a.value("rstrip", false)});
      vocab_size_ = std::max(vocab_size_, added_.back().id + 1);
    }
    // Longest first, so the leftmost match is also the longest.
    std::stable_sort(added_.begin(), added_.end(),
                     [](const Added& x, const Added& y) { return x.content.size() > y.content.size(); });
    for (const auto& a : added_) added_by_id_[a.id] = &a;
  }
  // BOS / EOS / PAD: tokenizer_config.json beside the file, else well-known special tokens.
  json cfg;
  auto cfg_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) {
    std::ifstream cin(cfg_path);
    try {
      cfg = json::parse(cin);
    } catch (const json::exception& e) {
      throw FormatError(fmt::format("{}: not valid JSON ({})", cfg_path.string(), e.what()));
    }
  }
  bos_ = special_id(cfg, "bos_token", {"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  eos_ = special_id(cfg, "eos_token", {"<|end_of_text|>", "<|eot_id|>", "</s>", "<|endoftext|>"});
  pad_ = special_id(cfg, "pad_token", {"<pad>", "<|pad|>", "[PAD]"});
  if (pad_ < 0) pad_ = eos_;  // padding is masked from the loss, so EOS serves
}

int64_t HfTokenizer::special_id(const json& cfg, const char* key, std::initializer_list<const char*> names) const {
  if (cfg.is_object() && cfg.contains(key) && !cfg[key].is_null()) {
    std::string s = cfg[key].is_string() ? cfg[key].get<std::string>() : cfg[key].value("content", "");
    for (const auto& a : added_)
      if (a.content == s) return a.id;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) return it->second;
  }
  for (const char* n : names)
    for (const auto& a : added_)
      if (a.special && a.content == n) return a.id;
  return -1;
}

void HfTokenizer::load_normalizer(const json& n, const std::string& key) {
  const std::string t = n.value("type", "");
  UErrorCode err = U_ZERO_ERROR;
  if (t == "Sequence") {
    int i = 0;
    for (const auto& sub : n.value("normalizers", json::array())) load_normalizer(sub, fmt::format("{}.normalizers[{}]", key, i++));
    return;
  }
  const icu::Normalizer2* norm = nullptr;
  if (t == "NFC") norm = icu::Normalizer2::getNFCInstance(err);
  if (t == "NFD") norm = icu::Normalizer2::getNFDInstance(err);
  if (t == "NFKC") norm = icu::Normalizer2::getNFKCInstance(err);
  if (t == "NFKD") norm = icu::Normalizer2::getNFKDInstance(err);
  if (!norm || U_FAILURE(err))
    fail(key + ".type", fmt::format("\"{}\" is not supported (forge applies NFC, NFD, NFKC, NFKD or a Sequence of them)", t));
  normalizers_.push_back(norm);
}

void HfTokenizer::load_pre_tokenizer(const json& p, const std::string& key) {
  const std::string t = p.value("type", "");
  if (t == "Sequence") {
    int i = 0;
    for (const auto& sub : p.value("pretokenizers", json::array()))
      load_pre_tokenizer(sub, fmt::format("{}.pretokenizers[{}]", key, i++));
    return;
  }
  PreTokenizer pt;
  pt.type = t;
  UErrorCode err = U_ZERO_ERROR;
  UParseError perr;
  if (t == "ByteLevel") {
    pt.add_prefix_space = p.value("add_prefix_space", false);
    pt.use_regex = p.value("use_regex", true);
    if (pt.use_regex)
      pt.regex.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(kGpt2Pattern), 0, perr, err));
  } else if (t == "Split") {
    const json& pat = p.value("pattern", json::object());
    if (pat.contains("Regex")) {
      pt.regex.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(pat["Regex"].get<std::string>()), 0, perr, err));
      if (U_FAILURE(err))
        fail(key + ".pattern.Regex", fmt::format("ICU cannot compile it ({}, at offset {})", u_errorName(err), perr.offset));
    } else if (pat.contains("String")) {
      pt.literal = pat["String"].get<std::string>();
      if (pt.literal.empty()) fail(key + ".pattern.String", "is empty");
    } else {
      fail(key + ".pattern", "needs Regex or String");
    }
    pt.behavior = p.value("behavior", "Isolated");
    static const std::vector<std::string> behaviors = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                                       "Contiguous"};
    if (std::find(behaviors.begin(), behaviors.end(), pt.behavior) == behaviors.end())
      fail(key + ".behavior", fmt::format("\"{}\" is not a split behaviour", pt.behavior));
    pt.invert = p.value("invert", false);
  } else if (t == "Digits") {
    pt.individual_digits = p.value("individual_digits", false);
  } else {
    fail(key + ".type", fmt::format("\"{}\" is not supported (forge reads byte-level BPE: ByteLevel, Split, Digits, "
                                    "Sequence)",
                                    t));
  }
  if (U_FAILURE(err)) fail(key, fmt::format("ICU error {}", u_errorName(err)));
  pre_.push_back(std::move(pt));
}

std::vector<Piece> HfTokenizer::split_added(const std::string& text, std::vector<int64_t>& added_ids) const {
  // Pieces alternate: text pieces, and added-token pieces marked by begin == end == npos... kept simple:
  // a piece with text empty and exact = false and added id in added_ids at the same index.
  std::vector<Piece> out;
  added_ids.clear();
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  auto word_char = [](unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; };
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const Added* hit = nullptr;
    for (const auto& a : added_) {
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word && ((i > 0 && word_char(text[i - 1])) ||
                            (i + a.content.size() < text.size() && word_char(text[i + a.content.size()]))))
        continue;
      hit = &a;
      break;
    }
    if (!hit) {
      i += utf8_len(static_cast<unsigned char>(text[i]));
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      while (b > start && is_space(text[b - 1])) --b;
    if (hit->rstrip)
      while (e < text.size() && is_space(text[e])) ++e;
    if (b > start) {
      out.push_back(Piece{text.substr(start, b - start), start, b, true});
      added_ids.push_back(-1);
    }
    out.push_back(Piece{"", b, e, false});
    added_ids.push_back(hit->id);
    start = i = e;
  }
  if (start < text.size()) {
    out.push_back(Piece{text.substr(start), start, text.size(), true});
    added_ids.push_back(-1);
  }
  return out;
}

std::string HfTokenizer::normalize(const std::string& s) const {
  if (normalizers_.empty()) return s;
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(s);
  for (const auto* n : normalizers_) {
    UErrorCode err = U_ZERO_ERROR;
    u = n->normalize(u, err);
    if (U_FAILURE(err)) throw FormatError(fmt::format("{}: normalisation failed ({})", path_, u_errorName(err)));
  }
  std::string out;
  u.toUTF8String(out);
  return out;
}

std::vector<Piece> HfTokenizer::apply(const PreTokenizer& p, const Piece& in) const {
  // The spans of the piece's text that are "matches" (delimiters).
  std::vector<std::pair<size_t, size_t>> matches;
  const std::string& t = in.text;
  if (p.type == "Digits") {
    for (size_t i = 0; i < t.size();) {
      if (!std::isdigit(static_cast<unsigned char>(t[i]))) {
        ++i;
        continue;
      }
      size_t j = i + 1;
      if (!p.individual_digits)
        while (j < t.size() && std::isdigit(static_cast<unsigned char>(t[j]))) ++j;
      matches.emplace_back(i, j);
      i = j;
    }
  } else if (!p.literal.empty()) {
    for (size_t pos = t.find(p.literal); pos != std::string::npos; pos = t.find(p.literal, pos + p.literal.size()))
      matches.emplace_back(pos, pos + p.literal.size());
  } else if (p.regex) {
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(t);
    auto map = utf16_to_utf8(u);
    UErrorCode err = U_ZERO_ERROR;
    std::unique_ptr<icu::RegexMatcher> m(p.regex->matcher(u, err));
    while (U_SUCCESS(err) && m->find(err)) {
      const int32_t s = m->start(err), e = m->end(err);
      if (e > s) matches.emplace_back(map[static_cast<size_t>(s)], map[static_cast<size_t>(e)]);
    }
    if (U_FAILURE(err)) throw FormatError(fmt::format("{}: regex failed while pre-tokenising ({})", path_, u_errorName(err)));
  }
  // Segments: (begin, end, is_match) covering the text.
  std::vector<std::tuple<size_t, size_t, bool>> seg;
  size_t at = 0;
  for (const auto& [b, e] : matches) {
    if (b > at) seg.emplace_back(at, b, false);
    seg.emplace_back(b, e, true);
    at = e;
  }
  if (at < t.size()) seg.emplace_back(at, t.size(), false);
  const bool isolated = p.type != "Split" || p.behavior == "Isolated";
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t k = 0; k < seg.size(); ++k) {
    auto [b, e, is_match] = seg[k];
    const bool delim = p.invert ? !is_match : is_match;
    if (isolated || !delim) {
      spans.emplace_back(b, e);
    } else if (p.behavior == "Removed") {
      continue;
    } else if (p.behavior == "MergedWithPrevious") {
      if (!spans.empty() && std::get<1>(seg[k - 1]) == b && !(p.invert ? !std::get<2>(seg[k - 1]) : std::get<2>(seg[k - 1])))
        spans.back().second = e;
      else
        spans.emplace_back(b, e);
    } else if (p.behavior == "MergedWithNext") {
      spans.emplace_back(b, e);
      if (k + 1 < seg.size()) {
        spans.back().second = std::get<1>(seg[k + 1]);
        ++k;
      }
    } else {  // Contiguous: adjacent delimiters form one piece
      if (k > 0 && !spans.empty() && (p.invert ? !std::get<2>(seg[k - 1]) : std::get<2>(seg[k - 1])) &&
          spans.back().second == b)
        spans.back().second = e;
      else
        spans.emplace_back(b, e);
    }
  }
  std::vector<Piece> out;
  for (const auto& [b, e] : spans) {
    if (e <= b) continue;
    Piece piece{t.substr(b, e - b), in.exact ? in.begin + b : in.begin, in.exact ? in.begin + e : in.end, in.exact};
    out.push_back(std::move(piece));
  }
  return out;
}

std::vector<Piece> HfTokenizer::pre_tokenize(std::vector<Piece> pieces) const {
  for (const auto& p : pre_) {
    std::vector<Piece> next;
    for (auto& piece : pieces) {
      if (p.type == "ByteLevel" && p.add_prefix_space && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text = " " + piece.text;
        piece.exact = false;  // a byte that is not in the original text
      }
      if (p.type == "ByteLevel" && !p.use_regex) {
        next.push_back(std::move(piece));
        continue;
      }
      auto parts = apply(p, piece);
      next.insert(next.end(), parts.begin(), parts.end());
    }
    pieces = std::move(next);
  }
  return pieces;
}

const std::vector<std::pair<int64_t, size_t>>& HfTokenizer::bpe(const std::string& word) const {
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) return it->second;
  }
  const ByteMap& bm = byte_map();
  std::vector<std::string> sym;      // byte-level characters
  std::vector<size_t> bytes;         // original bytes each symbol covers
  std::string whole;
  for (unsigned char c : word) {
    sym.push_back(bm.to_char[c]);
    bytes.push_back(1);
    whole += bm.to_char[c];
  }
  std::vector<std::pair<int64_t, size_t>> out;
  auto id_of = [&](const std::string& tok) -> int64_t {
    auto it = vocab_.find(tok);
    if (it != vocab_.end()) return it->second;
    if (unk_ >= 0) return unk_;
    throw FormatError(fmt::format("{}: token \"{}\" is not in the vocabulary and there is no unk_token", path_, tok));
  };
  if (ignore_merges_ && vocab_.count(whole)) {
    out.emplace_back(vocab_.at(whole), word.size());
  } else {
    while (sym.size() > 1) {
      int best = std::numeric_limits<int>::max();
      size_t at = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merge_rank_.find(sym[i] + '\x01' + sym[i + 1]);
        if (it != merge_rank_.end() && it->second < best) {
          best = it->second;
          at = i;
        }
      }
      if (best == std::numeric_limits<int>::max()) break;
      // Merge every occurrence of the best pair, left to right.
      std::vector<std::string> ns;
      std::vector<size_t> nb;
      const std::string a = sym[at], b = sym[at + 1];
      for (size_t i = 0; i < sym.size();) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
          ns.push_back(a + b);
          nb.push_back(bytes[i] + bytes[i + 1]);
          i += 2;
        } else {
          ns.push_back(sym[i]);
          nb.push_back(bytes[i]);
          ++i;
        }
      }
      sym = std::move(ns);
      bytes = std::move(nb);
    }
    for (size_t i = 0; i < sym.size(); ++i) out.emplace_back(id_of(sym[i]), bytes[i]);
  }
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() > 200000) cache_.clear();
  return cache_.emplace(word, std::move(out)).first->second;
}

std::vector<int64_t> HfTokenizer::encode(const std::string& text, std::vector<std::pair<size_t, size_t>>* offsets) const {
  std::vector<int64_t> ids;
  std::vector<int64_t> added_ids;
  auto widen = [&](size_t b, size_t e) {  // to whole UTF-8 characters of the original text
    while (b > 0 && b < text.size() && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
    while (e < text.size() && (static_cast<unsigned char>(text[e]) & 0xC0) == 0x80) ++e;
    return std::make_pair(b, e);
  };
  auto pieces = split_added(text, added_ids);
  for (size_t k = 0; k < pieces.size(); ++k) {
    if (added_ids[k] >= 0) {
      ids.push_back(added_ids[k]);
      if (offsets) offsets->emplace_back(pieces[k].begin, pieces[k].end);
      continue;
    }
    Piece p = pieces[k];
    std::string n = normalize(p.text);
    if (n != p.text) {
      p.text = n;
      p.exact = false;
    }
    for (const auto& word : pre_tokenize({p})) {
      size_t at = word.begin;
      for (const auto& [id, nbytes] : bpe(word.text)) {
        ids.push_back(id);
        if (offsets) {
          if (word.exact) {
            offsets->push_back(widen(at, at + nbytes));
            at += nbytes;
          } else {
            offsets->emplace_back(word.begin, word.end);
          }
        }
      }
    }
  }
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids) const {
  const ByteMap& bm = byte_map();
  std::string bytes;
  for (int64_t id : ids) {
    if (auto a = added_by_id_.find(id); a != added_by_id_.end()) {
      if (!a->second->special) bytes += a->second->content;
      continue;
    }
    auto it = id_to_token_.find(id);
    if (it == id_to_token_.end()) continue;
    const std::string& tok = it->second;
    for (size_t i = 0; i < tok.size();) {
      size_t n = utf8_len(static_cast<unsigned char>(tok[i]));
      auto b = bm.to_byte.find(tok.substr(i, n));
      if (b != bm.to_byte.end()) {
        bytes.push_back(static_cast<char>(b->second));
      } else {
        bytes += tok.substr(i, n);
      }
      i += n;
    }
  }
  // Invalid UTF-8 becomes U+FFFD, as Python's bytes.decode(errors="replace").
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(bytes);
  std::string out;
  u.toUTF8String(out);
  return out;
}

}  // namespace

std::shared_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) { return std::make_shared<HfTokenizer>(path); }

}  // namespace forge
