// Models of tokenizer.json: BPE (byte-level, as GPT-2 and Llama-3; or on characters with byte
// fallback, as SentencePiece models converted for Llama-2, Mistral and Gemma) in bpe.cpp, and
// Unigram (T5, ALBERT and other SentencePiece unigram models) in unigram.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tokenizer/json_file.h"

namespace forge::tok {

// One token of a pre-token: its id and the bytes [begin, end) of the pre-token it stands for.
struct WordToken {
  int32_t id;
  uint32_t begin, end;
};
using WordTokens = std::vector<WordToken>;

class Model {
 public:
  virtual ~Model() = default;
  // The tokens of one pre-token (never empty).
  virtual void tokenize(std::string_view word, WordTokens* out) const = 0;
  // Every entry of model.vocab, by its string; and the string of each id (Model::id_to_token).
  const std::unordered_map<std::string, int64_t>& vocab() const { return vocab_; }
  const std::vector<const std::string*>& tokens() const { return tokens_; }
  virtual const char* name() const = 0;

 protected:
  void index_tokens();  // tokens_ from vocab_ (the first string met for an id)
  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<const std::string*> tokens_;
};

// model.type "BPE". byte_level: the pre-tokenizer has a ByteLevel step, so that tokens are byte
// strings in GPT-2's alphabet.
std::unique_ptr<Model> load_bpe(const JsonFile& f, const json& model, bool byte_level);
// model.type "Unigram".
std::unique_ptr<Model> load_unigram(const JsonFile& f, const json& model);

}  // namespace forge::tok
