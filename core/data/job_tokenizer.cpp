// make_tokenizer(DataConfig) (core/data/job_tokenizer.h).
#include "core/data/job_tokenizer.h"

#include <filesystem>

#include <fmt/format.h>

#include "forge/error.h"

namespace forge {

namespace {

// A tokenizer whose special ids are replaced; everything else is the inner one's.
class SpecialIds final : public Tokenizer {
 public:
  SpecialIds(std::shared_ptr<Tokenizer> inner, int64_t bos, int64_t eos, int64_t pad)
      : inner_(std::move(inner)), bos_(bos), eos_(eos), pad_(pad) {}
  std::vector<int64_t> encode(const std::string& text, std::vector<std::pair<size_t, size_t>>* offsets) const override {
    return inner_->encode(text, offsets);
  }
  std::string decode(const std::vector<int64_t>& ids) const override { return inner_->decode(ids); }
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return eos_; }
  int64_t pad_id() const override { return pad_; }
  std::string describe() const override {
    return fmt::format("{} (BOS {}, EOS {}, PAD {})", inner_->describe(), bos_, eos_, pad_);
  }

 private:
  std::shared_ptr<Tokenizer> inner_;
  int64_t bos_, eos_, pad_;
};

}  // namespace

std::shared_ptr<Tokenizer> make_tokenizer(const DataConfig& data) {
  std::error_code ec;
  if (!data.tokenizer_path.empty() && !std::filesystem::exists(data.tokenizer_path, ec))
    throw UserError(fmt::format(
        "data.tokenizer_path = \"{0}\": no such file. forge reads a local Hugging Face tokenizer.json; a hub id "
        "such as \"{0}\" must be downloaded first (huggingface-cli download {0} tokenizer.json --local-dir "
        "models/{0}, then data.tokenizer_path = \"models/{0}/tokenizer.json\"), or leave tokenizer_path empty for "
        "forge's byte-level tokenizer",
        data.tokenizer_path));
  auto tok = make_tokenizer(data.tokenizer_path);
  if (!data.bos_token_id && !data.eos_token_id && !data.pad_token_id) return tok;
  const int64_t vocab = tok->vocab_size();
  auto pick = [&](const std::optional<int64_t>& v, int64_t own, const char* key) {
    if (!v) return own;
    if (*v >= vocab)
      throw UserError(fmt::format("data.{} = {} is outside the tokenizer's {} ids ({}); use an id below {}", key, *v,
                                  vocab, data.tokenizer_path.empty() ? "byte-level" : data.tokenizer_path, vocab));
    return *v;
  };
  const int64_t eos = pick(data.eos_token_id, tok->eos_id(), "eos_token_id");
  // No pad token of its own: pad with the chosen EOS, as the tokenizer does with its own.
  const int64_t pad = data.pad_token_id ? pick(data.pad_token_id, -1, "pad_token_id")
                                        : (tok->pad_id() == tok->eos_id() ? eos : tok->pad_id());
  return std::make_shared<SpecialIds>(tok, pick(data.bos_token_id, tok->bos_id(), "bos_token_id"), eos, pad);
}

}  // namespace forge
