#include "core/training/caption_eval.h"

#include <algorithm>
#include <chrono>

#include <unicode/unistr.h>

#include "forge/error.h"

namespace forge {

CaptionEval caption_eval(VLMImpl& model, const DataLoader& data, const CaptionEvalOptions& options) {
  CaptionEval out;
  if (options.samples <= 0) return out;
  if (std::string why = model.transformer->hooks().generation_refusal(); !why.empty()) {
    out.skipped_why = why;
    return out;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  const Dataset& set = data.dataset();
  const Collator& collator = data.collator();
  for (size_t i = 0; i < set.size() && static_cast<int64_t>(out.samples.size()) < options.samples; ++i) {
    Example ex;
    at::Tensor px, frame_mask;  // a video model's clip: (1, F, 3, S, S) and its (1, F) real frames
    try {
      ex = set.get(i);
      if (model.video()) {
        auto [clip, mask] = clip_pixels(ex.frames, model.frames_per_clip(), data.preprocess(), data.image_size(),
                                        ex.source);
        px = clip.unsqueeze(0);
        frame_mask = mask.unsqueeze(0).to(options.device);
      } else {
        px = preprocess_image(ex.image, data.preprocess(), data.image_size()).unsqueeze(0);
      }
    } catch (const Error&) {
      continue;  // a bad row: the loss evaluation reports it under bad_rows
    }
    const std::vector<int64_t> ids = collator.prompt_ids(ex);
    const int64_t room = options.max_seq_len - model.residual_image_tokens() - static_cast<int64_t>(ids.size());
    if (room <= 0) continue;
    GenerateOptions g;
    g.max_new_tokens = std::min(collator.text_len(), room);
    g.eos_id = collator.tokenizer().eos_id();
    g.agree = options.agree;
    at::Tensor prompt = at::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});
    at::Tensor tokens;
    {
      AutocastScope autocast(options.precision);
      tokens = generate(model, px.to(options.device), prompt.to(options.device), g, frame_mask).to(at::kCPU);
    }
    std::vector<int64_t> gen(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel());
    while (!gen.empty() && gen.back() == g.eos_id) gen.pop_back();  // rows that stopped early are padded with EOS
    // An untrained model's bytes need not be UTF-8: invalid sequences become U+FFFD.
    std::string text;
    icu::UnicodeString::fromUTF8(collator.tokenizer().decode(gen)).toUTF8String(text);
    std::vector<std::string> more;
    for (const auto& r : ex.references)
      if (r != ex.text && std::find(more.begin(), more.end(), r) == more.end()) more.push_back(r);
    out.samples.push_back({static_cast<int64_t>(i), ex.source, ex.text, std::move(more), text,
                           thumbnail(ex.frames.empty() ? ex.image : ex.frames.front(), options.thumbnail_side)});
  }
  if (out.samples.empty()) out.skipped_why = "no held-out sample loaded and fit model.max_seq_len";
  std::vector<std::string> generated;
  std::vector<std::vector<std::string>> references;
  for (const auto& s : out.samples) {
    generated.push_back(s.generated);
    references.push_back({s.reference});
    references.back().insert(references.back().end(), s.more_references.begin(), s.more_references.end());
  }
  out.scores = score_captions(generated, references);
  if (was_training) model.train();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace forge
