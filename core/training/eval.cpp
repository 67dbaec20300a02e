#include "core/training/eval.h"


namespace forge {

double EvalResult::kind_accuracy(const std::string& kind) const {
  auto it = by_kind.find(kind);
  return it == by_kind.end() || it->second.second == 0 ? 0.0
                                                        : static_cast<double>(it->second.first) / it->second.second;
}

EvalResult evaluate(VLMImpl& model, DataLoader& loader, int64_t batches, const at::Device& device, const Precision& precision) {
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  loader.restore(LoaderState{});
  EvalResult r;
  double loss_sum = 0;
  int64_t right_tokens = 0, right_words = 0;
  const int64_t shift = model.residual_image_tokens() > 0 ? 0 : 1;  // input position p is target p - shift
  const int64_t n = std::min(batches, loader.batches_per_epoch());
  for (int64_t b = 0; b < n; ++b) {
    Batch batch = loader.next();
    at::Tensor px = batch.pixel_values.to(device), ids = batch.input_ids.to(device), labels = batch.labels.to(device);
    VLMOutput out;
    {
      AutocastScope autocast(precision);
      out = model.forward(px, ids, labels, batch.frame_mask.defined() ? batch.frame_mask.to(device) : at::Tensor());
    }
    at::Tensor logits = out.logits.to(at::kFloat).flatten(0, 1);
    at::Tensor tgt = out.targets.flatten();
    loss_sum += at::cross_entropy_loss(logits, tgt, {}, at::Reduction::Sum, -100).item<double>();
    at::Tensor valid = tgt.ne(-100);
    at::Tensor pred = out.logits.argmax(-1);
    at::Tensor correct = pred.eq(out.targets);
    r.tokens += valid.sum().item<int64_t>();
    right_tokens += (correct.flatten() & valid).sum().item<int64_t>();
    at::Tensor ok = correct.to(at::kCPU);
    auto acc = ok.accessor<bool, 2>();
    for (size_t i = 0; i < batch.image_words.size(); ++i) {
      for (const auto& [begin, end, kind] : batch.image_words[i]) {
        const int64_t a = begin - shift, z = end - shift;
        if (a < 0 || z > ok.size(1)) continue;
        bool all = true;
        for (int64_t t = a; t < z; ++t) all = all && acc[static_cast<int64_t>(i)][t];
        auto& k = r.by_kind[kind];
        ++k.second;
        ++r.words;
        if (all) {
          ++k.first;
          ++right_words;
        }
      }
    }
    ++r.batches;
  }
  r.loss = r.tokens ? loss_sum / static_cast<double>(r.tokens) : 0.0;
  r.token_accuracy = r.tokens ? static_cast<double>(right_tokens) / r.tokens : 0.0;
  r.word_accuracy = r.words ? static_cast<double>(right_words) / r.words : 0.0;
  if (was_training) model.train();
  return r;
}

}  // namespace forge
