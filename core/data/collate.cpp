// The byte tokenizer, the tokenizer factory and the collator.
#include <algorithm>

#include <fmt/format.h>

#include "core/data/data.h"
#include "core/util/strings.h"
#include "forge/error.h"

namespace forge {

Dataset::~Dataset() = default;
Tokenizer::~Tokenizer() = default;

std::vector<int64_t> ByteTokenizer::encode(const std::string& text,
                                           std::vector<std::pair<size_t, size_t>>* offsets) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    ids.push_back(static_cast<unsigned char>(text[i]));
    if (offsets) offsets->emplace_back(i, i + 1);
  }
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids)
    if (id >= 0 && id < 256) out.push_back(static_cast<char>(id));
  return out;
}

std::shared_ptr<Tokenizer> make_tokenizer(const std::string& path) {
  if (path.empty() || path == "bytes") return std::make_shared<ByteTokenizer>();
  return load_hf_tokenizer(path);
}

Collator::Collator(std::shared_ptr<Tokenizer> tokenizer, int64_t text_len, bool prepend_bos, std::string chat_template)
    : tokenizer_(std::move(tokenizer)), text_len_(text_len), prepend_bos_(prepend_bos), template_(std::move(chat_template)) {
  if (prepend_bos_ && tokenizer_->bos_id() < 0)
    throw UserError(fmt::format("the arch keeps no image position before the text, so captions need a BOS token, "
                                "but the tokenizer ({}) has none",
                                tokenizer_->describe()));
  if (!template_.empty() && template_.find("{text}") == std::string::npos)
    throw UserError(fmt::format("data.chat_template \"{}\" has no {{text}}", template_));
}

std::pair<std::vector<int64_t>, int64_t> Collator::tokens_of(const Example& ex,
                                                            std::vector<std::pair<size_t, size_t>>* text_offsets,
                                                            int64_t* text_start) const {
  std::string prompt = ex.prompt, text = ex.text, suffix;
  if (!template_.empty()) {
    size_t at = template_.find("{text}");
    std::string before = template_.substr(0, at);
    suffix = template_.substr(at + 6);
    size_t p = before.find("{prompt}");
    prompt = p == std::string::npos ? before : before.substr(0, p) + ex.prompt + before.substr(p + 8);
  }
  std::vector<int64_t> ids;
  if (prepend_bos_) ids.push_back(tokenizer_->bos_id());
  auto prompt_ids = tokenizer_->encode(prompt);
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  const auto masked = static_cast<int64_t>(ids.size());
  if (text_start) *text_start = masked;
  auto text_ids = tokenizer_->encode(text, text_offsets);
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  if (!suffix.empty()) {
    auto s = tokenizer_->encode(suffix);
    ids.insert(ids.end(), s.begin(), s.end());
  }
  if (tokenizer_->eos_id() >= 0) ids.push_back(tokenizer_->eos_id());  // D7
  return {ids, masked};
}

std::vector<int64_t> Collator::prompt_ids(const Example& ex) const {
  Example prompt_only;
  prompt_only.prompt = ex.prompt;
  auto [ids, text_start] = tokens_of(prompt_only);
  ids.resize(static_cast<size_t>(text_start));
  return ids;
}

Batch Collator::collate(const std::vector<Example>& examples, const std::vector<at::Tensor>& pixels) const {
  const auto B = static_cast<int64_t>(examples.size());
  const int64_t T = text_len_;
  Batch b;
  b.pixel_values = at::stack(pixels);
  b.input_ids = at::full({B, T}, tokenizer_->pad_id() >= 0 ? tokenizer_->pad_id() : 0, at::kLong);
  b.labels = at::full({B, T}, -100, at::kLong);
  auto ids_a = b.input_ids.accessor<int64_t, 2>();
  auto lab_a = b.labels.accessor<int64_t, 2>();
  b.image_words.resize(B);
  for (int64_t i = 0; i < B; ++i) {
    std::vector<std::pair<size_t, size_t>> offsets;
    int64_t text_start = 0;
    auto [ids, masked] = tokens_of(examples[i], &offsets, &text_start);
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), T);
    for (int64_t t = 0; t < n; ++t) {
      ids_a[i][t] = ids[t];
      if (t >= masked) {
        lab_a[i][t] = ids[t];
        ++b.label_tokens;
      }
    }
    // Token positions of the image words.
    for (const auto& w : examples[i].image_words) {
      int64_t first = -1, last = -1;
      for (size_t k = 0; k < offsets.size(); ++k) {
        if (offsets[k].second > w.begin && offsets[k].first < w.end) {
          if (first < 0) first = static_cast<int64_t>(k);
          last = static_cast<int64_t>(k);
        }
      }
      if (first < 0) continue;
      const int64_t begin = text_start + first, end = text_start + last + 1;
      if (end <= T) b.image_words[i].emplace_back(begin, end, w.kind);
    }
    b.sources.push_back(examples[i].source);
  }
  return b;
}

}  // namespace forge
