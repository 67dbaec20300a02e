// encoder/random: [vision_encoder] type = "random".
//
// A deterministic stub with no parameters: image i gets a (num_tokens,
// feature_dim) standard-normal tensor drawn from a fresh CPU generator seeded
// with trunc(sum of its pixels * 1e6) (negative seeds reinterpreted as
// unsigned 64-bit), exactly as KempnerForge's stub. It makes shapes and
// plumbing testable without a real tower; it carries no image content a model
// could generalise from. The tokens are the same on every device.
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include <fmt/format.h>

#include "forge/forge.h"

namespace forge::plugins::encoder::random {

constexpr int64_t kDefaultTokens = 16;
constexpr int64_t kDefaultDim = 768;

class RandomEncoder final : public VisionEncoder {
 public:
  RandomEncoder(int64_t tokens, int64_t dim) : tokens_(tokens), dim_(dim) {}

  at::Tensor forward(const at::Tensor& pixels) override {
    if (pixels.dim() != 4)
      throw InvalidArgument(fmt::format("encoder random: expected (B, 3, H, W) pixels, got {} dims", pixels.dim()));
    std::vector<at::Tensor> out;
    out.reserve(pixels.size(0));
    // Summed on the CPU in the input dtype, as the reference does: a GPU's
    // reduction order would change the last bits of the sum, hence the seed,
    // so the same image would get other tokens on another device.
    at::Tensor sums = pixels.detach().to(at::kCPU).flatten(1).sum(1);
    for (int64_t i = 0; i < pixels.size(0); ++i) {
      const double s = sums[i].item<double>();
      const auto seed = static_cast<int64_t>(std::trunc(s * 1e6));
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
      out.push_back(at::randn({tokens_, dim_}, gen, at::TensorOptions().dtype(at::kFloat)));
    }
    return at::stack(out).to(pixels.device());
  }
  int64_t feature_dim() const override { return dim_; }
  int64_t num_tokens() const override { return tokens_; }
  Preprocess preprocess() const override { return Preprocess{}; }  // any size, mean = std = 0.5
  double forward_flops() const override { return 0.0; }

 private:
  int64_t tokens_, dim_;
};

class RandomEncoderPlugin final : public EncoderPlugin {
 public:
  EncoderInfo describe(const EncoderConfig& cfg) const override {
    return EncoderInfo{cfg.feature_dim > 0 ? cfg.feature_dim : kDefaultDim,
                       cfg.num_tokens > 0 ? cfg.num_tokens : kDefaultTokens, Preprocess{}};
  }
  std::shared_ptr<VisionEncoder> create(const EncoderConfig& cfg, const BuildContext&) const override {
    EncoderInfo info = describe(cfg);
    return std::make_shared<RandomEncoder>(info.num_tokens, info.feature_dim);
  }
};

void register_plugin(Registrar& r) { r.add_encoder(std::make_shared<RandomEncoderPlugin>()); }

}  // namespace forge::plugins::encoder::random

FORGE_PLUGIN(forge::plugins::encoder::random::register_plugin,
             "Deterministic random patch tokens seeded by the pixels (no parameters); for tests and plumbing")
