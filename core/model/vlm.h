// The VLM wrapper and its builder, freezing, and generation.
//
// Data flow: pixels -> encoder -> adapter -> strategy builds the
// ModalityContext -> decoder -> logits aligned for a next-token loss (D1).
// State-dict names: vision_encoder.*, adapter.*, transformer.*.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/config/job.h"
#include "forge/decoder.h"
#include "forge/export.h"
#include "forge/modality.h"
#include "forge/vision.h"

namespace forge {

class Registry;

// Logits and the targets they predict, position for position: logits[:, t]
// is computed from the residual position just before target token t (D1).
struct FORGE_API VLMOutput {
  at::Tensor logits;   // (B, T', V); undefined when hidden states were asked for
  at::Tensor hidden;   // (B, T', D): the output head's input, when asked for instead of logits
  at::Tensor targets;  // (B, T') with -100 = ignored; undefined when no labels were given
};

class FORGE_API VLMImpl : public torch::nn::Module {
 public:
  // frames_per_clip > 1: a video model; each frame's patch tokens go through
  // the adapter with `frame_window` (adapter->forward_window).
  VLMImpl(std::shared_ptr<VisionEncoder> encoder, std::shared_ptr<VisionAdapter> adapter, Decoder transformer,
          std::shared_ptr<ModalityStrategy> strategy, int64_t max_text_len, int64_t frames_per_clip = 1,
          int64_t frame_window = 0);
  ~VLMImpl() override;

  // pixel_values (B, 3, H, W), or (B, F, 3, H, W) for a video model with
  // frame_mask (B, F) bool (false: a padding frame, whose tokens no position
  // attends to); input_ids (B, T) int64; labels (B, T) or undefined.
  // For an arch with image tokens in the residual stream (N of them), logit t
  // comes from position N - 1 + t, so the last image position predicts the
  // first text token. Without (cross-attention), logit t comes from text
  // position t and predicts token t + 1: T' = T - 1.
  VLMOutput forward(const at::Tensor& pixel_values, const at::Tensor& input_ids, const at::Tensor& labels = {},
                    const at::Tensor& frame_mask = {});
  // The same positions as forward, stopped before the output head (out.hidden):
  // for a loss that applies the head itself (linear_cross_entropy).
  VLMOutput forward_hidden(const at::Tensor& pixel_values, const at::Tensor& input_ids, const at::Tensor& labels,
                           const at::Tensor& frame_mask = {});
  // The output head's weight (V, D).
  const at::Tensor& output_weight() const;
  // What forward's `targets` are for these labels (D1): all of them when
  // image tokens lead the residual stream, else all but the first.
  at::Tensor targets_of(const at::Tensor& labels) const;

  // (B, N, D) visual tokens: encoder (under inference mode when frozen), then
  // adapter; a clip's frames are encoded one by one and their tokens
  // concatenated in time order (N = F x tokens per frame).
  at::Tensor encode_images(const at::Tensor& pixel_values);
  // The strategy's context for the decoder (no output slice); with a frame
  // mask, padding frames' tokens are masked (key_padding_mask for archs with
  // the image in the residual stream, image_mask for cross-attention).
  ModalityContext compose(const at::Tensor& pixel_values, const at::Tensor& input_ids,
                          const at::Tensor& frame_mask = {});
  // compose() from visual tokens encode_images already made.
  ModalityContext compose_encoded(const at::Tensor& visual, const at::Tensor& input_ids,
                                  const at::Tensor& frame_mask = {});

  // Image tokens per sample after the adapter, and how many sit in the residual stream.
  int64_t visual_tokens() const { return visual_tokens_; }
  int64_t residual_image_tokens() const { return residual_tokens_; }
  int64_t max_text_len() const { return max_text_len_; }
  // Frames per video clip (1: an image model).
  int64_t frames_per_clip() const { return frames_per_clip_; }
  bool video() const { return frames_per_clip_ > 1 || frame_window_ > 0; }
  // True when no encoder parameter requires grad (then it runs without autograd).
  bool encoder_frozen() const;
  // True when no adapter parameter requires grad (its FLOPs count once, D12).
  bool adapter_frozen() const;
  // train.activation_checkpointing: recompute every `every`-th decoder layer
  // and tower block (0: none) in backward.
  void set_activation_checkpointing(int64_t every);
  // Model FLOPs of one sample's forward (D12, docs/metrics.md).
  double forward_flops_per_sample(int64_t text_len) const;

  std::shared_ptr<VisionEncoder> vision_encoder;
  std::shared_ptr<VisionAdapter> adapter;
  Decoder transformer{nullptr};
  std::shared_ptr<ModalityStrategy> strategy;

 private:
  VLMOutput run(const at::Tensor& pixel_values, const at::Tensor& input_ids, const at::Tensor& labels,
                const at::Tensor& frame_mask, bool hidden);
  int64_t visual_tokens_ = 0;
  int64_t frames_per_clip_ = 1;
  int64_t frame_window_ = 0;
  int64_t residual_tokens_ = 0;
  int64_t max_text_len_ = 0;
};
TORCH_MODULE(VLM);

// Builds the VLM from a resolved config through the registry (random init,
// seeded with train.seed; pretrained encoder weights when the encoder has a
// path). Checks that the residual stream fits model.max_seq_len.
FORGE_API VLM build_vlm(const JobConfig& job, Registry& registry);
// A text-only decoder (no arch hooks).
FORGE_API Decoder build_text_decoder(const ModelConfig& cfg);

// ------------------------------------------------------------ freezing (spec 4.1 with D2, D3)

// Applies specs in order (later ones win). A spec's module is an alias of
// `patterns` or an fnmatch pattern over parameter names; a spec that matches
// no parameter is a UserError. Returns elements flipped per spec module.
FORGE_API std::map<std::string, int64_t> apply_freeze(torch::nn::Module& model, const std::vector<FreezeSpec>& specs,
                                                      const StringListMap& patterns);
// The specs in force at `step`: base, then every stage with start_step <= step
// (a stage overwrites a module's entry; new modules are appended).
FORGE_API std::vector<FreezeSpec> effective_freeze(int64_t step, const std::vector<FreezeSpec>& base,
                                                   const std::vector<FreezeStage>& schedule);
// Sorted and de-duplicated, for checkpoint metadata.
FORGE_API std::vector<FreezeSpec> canonical_freeze(const std::vector<FreezeSpec>& specs);
// Checks every spec of vlm.freeze and of every stage of vlm.freeze_schedule
// against the model's parameter names, so a typo in a late stage is a
// UserError at start-up rather than hours into a run.
FORGE_API void check_freeze_specs(torch::nn::Module& model, const VLMConfig& vlm);
// Names of the parameters trainable at the start or after any stage (D2):
// the ones the optimizer must hold.
FORGE_API std::set<std::string> ever_trainable(torch::nn::Module& model, const VLMConfig& vlm);

// ------------------------------------------------------------ generation (D8)

struct FORGE_API GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  int64_t eos_id = -1;       // stop a sequence when it emits this (-1: never)
  uint64_t seed = 0;
  bool use_cache = true;     // false: re-run the whole sequence each step (a reference for tests)
  // Called with each step's chosen tokens (B) before they are used; may
  // replace them in place. Ranks that generate together over sharded
  // parameters broadcast one rank's choice here, so that all decode the same
  // tokens and stop at the same step (the gathers are collectives).
  std::function<void(at::Tensor&)> agree;
};

// Returns the generated tokens (B, G) (G <= max_new_tokens; rows that hit EOS
// early are padded with eos_id). The image prefix (or the cross-attention
// image features) is computed once and kept in the KV cache. A video model
// takes clips (B, F, 3, H, W) and their frame_mask (B, F), as in training:
// padding frames stay masked while every token is generated.
FORGE_API at::Tensor generate(VLMImpl& model, const at::Tensor& pixel_values, const at::Tensor& prompt_ids,
                              const GenerateOptions& options, const at::Tensor& frame_mask = {});
FORGE_API at::Tensor generate_text(DecoderImpl& decoder, const at::Tensor& prompt_ids, const GenerateOptions& options);

// Picks the next token from last-position logits (B, V) per the options.
FORGE_API at::Tensor sample_next(const at::Tensor& logits, const GenerateOptions& options, at::Generator& gen);

}  // namespace forge
