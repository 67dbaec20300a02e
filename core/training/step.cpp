#include "core/training/step.h"

#include <chrono>

#include "core/training/loss.h"

namespace forge {

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

StepStats compute_gradients(StepParts& parts, int64_t accum, const std::function<Batch()>& next_batch) {
  StepStats s;
  at::Tensor loss_sum;  // on the device: read once per step, not once per micro-batch
  const auto participants = step_participants(parts.model);
  const MicroBatch mb{parts.step, parts.max_steps, 1.0 / static_cast<double>(accum)};
  for (int64_t micro = 0; micro < accum; ++micro) {
    for (auto& [name, p] : participants) p->begin_micro_batch(mb);
    const auto td = Clock::now();
    Batch batch = next_batch();
    s.data_wait_s += std::chrono::duration<double>(Clock::now() - td).count();
    at::Tensor px = batch.pixel_values.to(parts.device, true), ids = batch.input_ids.to(parts.device, true),
               labels = batch.labels.to(parts.device, true);
    s.samples += px.size(0);
    // Counted from the host's labels: no device sync between the forward and the loss.
    const int64_t valid = parts.model.targets_of(batch.labels).ne(-100).sum().item<int64_t>();
    LossValue lv;
    {
      AutocastScope autocast(parts.precision);
      // The output head runs inside the loss, chunk by chunk: no (B, T, vocab) logits are kept.
      at::Tensor frames = batch.frame_mask.defined() ? batch.frame_mask.to(parts.device, true) : at::Tensor();
      VLMOutput out = parts.model.forward_hidden(px, ids, labels, frames);
      lv = linear_cross_entropy(out.hidden, parts.model.output_weight(), out.targets, parts.z_loss_weight, valid);
    }
    parts.dp.before_backward(micro + 1 == accum);
    (lv.loss / static_cast<double>(accum)).backward();  // D10: an all-ignored batch adds exact zeros
    loss_sum = loss_sum.defined() ? loss_sum + lv.loss.detach() : lv.loss.detach();
    s.label_tokens += lv.tokens;
  }
  parts.dp.finish_gradients();  // every rank's gradients averaged
  Distributed& dist = parts.dist;
  if (dist.world() > 1)  // e.g. routing counts: every rank moves its balancing state alike
    for (auto& [name, p] : participants)
      for (const at::Tensor& t : p->step_statistics()) dist.all_reduce_sum(t);
  s.loss = dist.sum(loss_sum.item<double>() / static_cast<double>(accum)) / dist.world();
  s.label_tokens = static_cast<int64_t>(dist.sum(static_cast<double>(s.label_tokens)));
  s.samples *= dist.world();
  const GradClip clip = parts.dp.grad_clip(parts.optimized, parts.grad_clip_norm);
  s.grad_norm = clip.norm;
  s.grad_scale = clip.scale;
  return s;
}

void finish_step(VLMImpl& model, bool updated) {
  for (auto& [name, p] : step_participants(model)) p->end_step(updated);
}

StepReport participant_report(VLMImpl& model) {
  StepReport r;
  for (auto& [name, p] : step_participants(model)) p->report(name, r);
  return r;
}

double train_step_flops(VLMImpl& model, int64_t samples, int64_t text_len, std::optional<int64_t> head_rows) {
  // Every frame of a clip goes through the tower and the adapter (the
  // adapter's count is its own window's: frames pool with [video] pool_window).
  const auto frames = static_cast<double>(model.frames_per_clip());
  const double enc = frames * model.vision_encoder->forward_flops() * (model.encoder_frozen() ? 1 : 3);
  const double ada =
      frames * model.adapter->forward_flops(model.vision_encoder->num_tokens()) * (model.adapter_frozen() ? 1 : 3);
  double flops = static_cast<double>(samples) * (3 * model.forward_flops_per_sample(text_len) + enc + ada);
  if (head_rows) {  // the head's forward and its two backward products at the positions the loss skipped
    const ModelConfig& m = model.transformer->config();
    flops -= 6.0 * static_cast<double>(m.dim) * static_cast<double>(m.vocab_size) *
             static_cast<double>(samples * text_len - *head_rows);
  }
  return flops;
}

}  // namespace forge
