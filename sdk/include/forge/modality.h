// ModalityContext and ModalityStrategy: how an arch puts image tokens and
// text tokens together for the decoder.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "forge/export.h"

namespace forge {

// Keep decoder output positions [start, start + length).
struct OutputSlice {
  int64_t start = 0;
  int64_t length = -1;  // -1: to the end
  // Return the final-normed hidden states of those positions instead of
  // logits (training applies the output head inside the loss, chunk by chunk).
  bool hidden = false;
};

// The bundle that flows into the decoder. Every field is optional (an
// undefined tensor means absent). Invariants are checked on construction and
// a violation throws forge::InvalidArgument:
//   - at most one of inputs_embeds / prefix_embeds / image_features;
//   - image_mask requires image_features;
//   - modality_ids requires prefix_embeds or inputs_embeds;
//   - shapes and dtypes agree (3-D embeddings, int64 modality_ids, bool masks
//     with matching batch and length).
// Per arch: joint_decoder = prefix_embeds (+ output_slice); cross_attention =
// image_features (+ image_mask); mot, moma = prefix_embeds + modality_ids
// (+ output_slice).
class FORGE_API ModalityContext {
 public:
  struct Fields {
    at::Tensor inputs_embeds;     // (B, S, D) replaces the token embedding
    at::Tensor prefix_embeds;     // (B, N, D) placed before the text
    at::Tensor image_features;    // (B, N, D) read by cross-attention layers
    at::Tensor image_mask;        // (B, N) bool, true = attend
    at::Tensor modality_ids;      // (B, N + T) int64, 0 = image, 1 = text
    // (B, N + T) bool, true = a real position. With a KV cache it covers the
    // cached positions and the new ones (a clip's padding frames stay masked
    // while tokens are generated), so unlike the reference it may come with
    // token ids alone.
    at::Tensor key_padding_mask;
    std::optional<OutputSlice> output_slice;
  };

  ModalityContext() = default;
  explicit ModalityContext(Fields fields);

  const at::Tensor& inputs_embeds() const { return f_.inputs_embeds; }
  const at::Tensor& prefix_embeds() const { return f_.prefix_embeds; }
  const at::Tensor& image_features() const { return f_.image_features; }
  const at::Tensor& image_mask() const { return f_.image_mask; }
  const at::Tensor& modality_ids() const { return f_.modality_ids; }
  const at::Tensor& key_padding_mask() const { return f_.key_padding_mask; }
  const std::optional<OutputSlice>& output_slice() const { return f_.output_slice; }
  const Fields& fields() const { return f_; }

  // A copy with another output slice (validated again).
  ModalityContext with_output_slice(std::optional<OutputSlice> slice) const;
  // Number of positions prefix_embeds adds to the residual (0 if none).
  int64_t prefix_length() const;

 private:
  Fields f_;
};

// Composes visual tokens and text ids into a ModalityContext for one arch.
// Stateless; created by the arch plugin from its VLMConfig.
class FORGE_API ModalityStrategy {
 public:
  virtual ~ModalityStrategy();
  virtual std::string name() const = 0;
  // visual: (B, N, D) adapter output already in model dim; input_ids: (B, T).
  virtual ModalityContext compose(const at::Tensor& visual, const at::Tensor& input_ids) const = 0;
  // Image tokens that sit in the decoder's residual stream for n visual tokens.
  virtual int64_t residual_image_tokens(int64_t n_visual) const = 0;
  // Context for a decode step after `prefill` (KV-cache generation). Default:
  // nothing (the image already sits in the cache). Cross-attention keeps its
  // image features.
  virtual ModalityContext decode_context(const ModalityContext& prefill) const;
};

// The image tokens in front of the text in one residual stream
// (prefix_embeds), with modality_ids (0 for the N image positions, 1 for the
// T text positions) when `modality_ids` is set: joint_decoder, mot, moma.
class FORGE_API PrefixStrategy final : public ModalityStrategy {
 public:
  PrefixStrategy(std::string name, bool modality_ids);
  std::string name() const override { return name_; }
  ModalityContext compose(const at::Tensor& visual, const at::Tensor& input_ids) const override;
  int64_t residual_image_tokens(int64_t n_visual) const override { return n_visual; }

 private:
  std::string name_;
  bool modality_ids_;
};

}  // namespace forge
