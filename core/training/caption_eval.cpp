#include "core/training/caption_eval.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>

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

  // The first `samples` examples that load and fit (on every rank, when ranks caption together).
  struct Pending {
    int64_t index;
    Example ex;
    at::Tensor px, frame_mask;  // (3, S, S), or a video model's clip (F, 3, S, S) and its (F) real frames
    std::vector<int64_t> ids;
  };
  std::vector<Pending> pending;
  for (size_t i = 0; i < set.size() && static_cast<int64_t>(pending.size()) < options.samples; ++i) {
    Pending p{static_cast<int64_t>(i), {}, {}, {}, {}};
    bool ok = true;
    try {
      p.ex = set.get(i);
      if (model.video())
        std::tie(p.px, p.frame_mask) = clip_pixels(p.ex.frames, model.frames_per_clip(), data.preprocess(),
                                                   data.image_size(), p.ex.source);
      else
        p.px = preprocess_image(p.ex.image, data.preprocess(), data.image_size());
      p.ids = collator.prompt_ids(p.ex);
      ok = options.max_seq_len - model.residual_image_tokens() - static_cast<int64_t>(p.ids.size()) > 0;
    } catch (const Error&) {
      ok = false;  // a bad row: the loss evaluation reports it under bad_rows
    }
    if (options.every_rank) ok = options.every_rank(ok);
    if (ok) pending.push_back(std::move(p));
  }

  // Captioned in batches of equal prompt length (one batch when no example has a prompt), in dataset order.
  std::vector<std::string> captions(pending.size());
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t k = 0; k < pending.size(); ++k) by_length[pending[k].ids.size()].push_back(k);
  const int64_t eos = collator.tokenizer().eos_id();
  const auto batch = static_cast<size_t>(std::max<int64_t>(1, options.batch_size));
  for (const auto& [length, members] : by_length) {
    const auto P = static_cast<int64_t>(length);
    for (size_t first = 0; first < members.size(); first += batch) {
      const size_t last = std::min(members.size(), first + batch);
      std::vector<at::Tensor> px, masks, prompts;
      for (size_t m = first; m < last; ++m) {
        const Pending& p = pending[members[m]];
        px.push_back(p.px);
        if (p.frame_mask.defined()) masks.push_back(p.frame_mask);
        prompts.push_back(at::tensor(p.ids, at::kLong).view({1, P}));
      }
      GenerateOptions g;
      g.max_new_tokens = std::min(collator.text_len(), options.max_seq_len - model.residual_image_tokens() - P);
      g.eos_id = eos;
      g.agree = options.agree;
      at::Tensor tokens;
      {
        AutocastScope autocast(options.precision);
        tokens = generate(model, at::stack(px).to(options.device), at::cat(prompts).to(options.device), g,
                          masks.empty() ? at::Tensor() : at::stack(masks).to(options.device))
                     .to(at::kCPU)
                     .contiguous();
      }
      for (size_t m = first; m < last; ++m) {
        at::Tensor row = tokens[static_cast<int64_t>(m - first)];
        std::vector<int64_t> gen(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
        while (!gen.empty() && gen.back() == eos) gen.pop_back();  // rows that stopped early are padded with EOS
        // An untrained model's bytes need not be UTF-8: invalid sequences become U+FFFD.
        icu::UnicodeString::fromUTF8(collator.tokenizer().decode(gen)).toUTF8String(captions[members[m]]);
      }
    }
  }
  for (size_t k = 0; k < pending.size(); ++k) {
    const Example& ex = pending[k].ex;
    std::vector<std::string> more;
    for (const auto& r : ex.references)
      if (r != ex.text && std::find(more.begin(), more.end(), r) == more.end()) more.push_back(r);
    out.samples.push_back({pending[k].index, ex.source, ex.text, std::move(more), captions[k],
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
