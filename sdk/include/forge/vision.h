// The vision side: encoders turn pixels into patch tokens, adapters turn
// patch tokens into decoder-width tokens.
#pragma once

#include <torch/nn/module.h>

#include <array>
#include <cstdint>
#include <string>

#include "forge/export.h"
#include "forge/param_unit.h"

namespace forge {

// How images must be prepared for an encoder (D6): the data pipeline resizes
// to image_size x image_size with `resize`, scales to [0, 1], then
// normalises each channel with mean/std.
struct FORGE_API Preprocess {
  int64_t image_size = 0;          // 0: any size (then [data] image_size decides)
  std::string resize = "bilinear"; // "bilinear" | "bicubic"
  std::array<double, 3> mean{0.5, 0.5, 0.5};
  std::array<double, 3> std{0.5, 0.5, 0.5};
};

// What an encoder will produce, known before it is built (config checks).
struct FORGE_API EncoderInfo {
  int64_t feature_dim = 0;
  int64_t num_tokens = 0;
  Preprocess preprocess;
};

// (B, 3, H, W) pixels -> (B, N, feature_dim) patch tokens.
class FORGE_API VisionEncoder : public torch::nn::Module {
 public:
  ~VisionEncoder() override;
  virtual at::Tensor forward(const at::Tensor& pixel_values) = 0;
  virtual int64_t feature_dim() const = 0;
  virtual int64_t num_tokens() const = 0;
  virtual Preprocess preprocess() const = 0;
  // Multiply-add FLOPs x2 of one image's forward (for MFU). Default:
  // 2 * parameters * num_tokens.
  virtual double forward_flops() const;
  // The tower's repeated blocks, for activation checkpointing and fully
  // sharded training (null: the tower has none; it then runs whole).
  virtual BlockStack* block_stack() { return nullptr; }
};

// (B, N, in_dim) -> (B, M, out_dim), M = output_num_tokens(N).
class FORGE_API VisionAdapter : public torch::nn::Module {
 public:
  ~VisionAdapter() override;
  virtual at::Tensor forward(const at::Tensor& features) = 0;
  virtual int64_t output_num_tokens(int64_t n) const = 0;
  // The same weights with a pooling window given per call (video frames use
  // [video] pool_window while images use the adapter's own): (B, N, in_dim)
  // -> (B, pooled_token_count(N, window), out_dim). A pooling adapter pools
  // with `window` instead of its own; the default, for adapters that do not
  // pool, averages window x window cells of the grid (pool_grid) and then
  // runs forward().
  virtual at::Tensor forward_window(const at::Tensor& features, int64_t window);
  // FLOPs of one image's forward for n input tokens. Default: 2 * parameters * output tokens.
  virtual double forward_flops(int64_t n) const;
};

// Token grids for pooling adapters. The N patch tokens must form a square
// grid (row-major); otherwise UserError says why (e.g. a CLS token).
FORGE_API int64_t square_grid_side(int64_t n_tokens);
// Tokens after pooling w x w windows over the grid, ragged edges included:
// ceil(side / w)^2. 196 tokens, w = 2 -> 49; 729, w = 3 -> 81; 729, w = 2 -> 196.
FORGE_API int64_t pooled_token_count(int64_t n_tokens, int64_t window);
// (B, N, C) -> (B, pooled_token_count(N, window), C): each window x window
// window of the square grid averaged over its real cells (ragged edges
// included), windows row-major.
FORGE_API at::Tensor pool_grid(const at::Tensor& tokens, int64_t window);

}  // namespace forge
