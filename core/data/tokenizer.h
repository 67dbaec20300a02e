// Tokenizers: forge's byte-level one and Hugging Face tokenizer.json files.
// No LibTorch here: tokenizers are plain C++.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "forge/export.h"

namespace forge {

class FORGE_API Tokenizer {
 public:
  virtual ~Tokenizer();
  // Ids of `text` without special tokens; with `offsets`, each token's byte
  // span [begin, end) in `text`.
  virtual std::vector<int64_t> encode(const std::string& text,
                                      std::vector<std::pair<size_t, size_t>>* offsets = nullptr) const = 0;
  // Text of `ids`, special tokens skipped.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;  // -1: none
  virtual int64_t eos_id() const = 0;
  virtual int64_t pad_id() const = 0;
  virtual std::string describe() const = 0;
};

// forge's byte-level tokenizer: ids 0..255 are bytes, 256 PAD, 257 BOS, 258 EOS.
class FORGE_API ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int64_t> encode(const std::string& text,
                              std::vector<std::pair<size_t, size_t>>* offsets = nullptr) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return 259; }
  int64_t bos_id() const override { return 257; }
  int64_t eos_id() const override { return 258; }
  int64_t pad_id() const override { return 256; }
  std::string describe() const override { return "byte-level (259 ids: 256 bytes, PAD 256, BOS 257, EOS 258)"; }
};

// "" (or "bytes"): the byte-level tokenizer; otherwise a Hugging Face tokenizer.json.
FORGE_API std::shared_ptr<Tokenizer> make_tokenizer(const std::string& path);

// A Hugging Face tokenizer.json: byte-level BPE (GPT-2, Llama-3), SentencePiece-style BPE with byte
// fallback (Llama-2, Mistral, Gemma) or Unigram (T5). Implemented in core/tokenizer/ (tokenizer_json.cpp
// and one file per component); anything else is a FormatError naming the file and the key.
FORGE_API std::shared_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

}  // namespace forge
