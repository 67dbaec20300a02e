// adapter/linear: [adapter] type = "linear". One Linear(in -> out) per token.
// Keys: proj.*.
#include "forge/forge.h"

namespace forge::plugins::adapter::linear {

class LinearAdapter final : public VisionAdapter {
 public:
  LinearAdapter(int64_t in, int64_t out) { proj = register_module("proj", torch::nn::Linear(in, out)); }
  // proj(x), with fp32 weight gradients under CPU bf16 autocast (forge/nn.h).
  at::Tensor forward(const at::Tensor& x) override { return nn::packed_linear(x, {proj.get()}); }
  int64_t output_num_tokens(int64_t n) const override { return n; }
  torch::nn::Linear proj{nullptr};
};

class Plugin final : public AdapterPlugin {
 public:
  int64_t output_num_tokens(const AdapterConfig&, int64_t n) const override { return n; }
  std::shared_ptr<VisionAdapter> create(const AdapterConfig&, int64_t in, int64_t out,
                                        const BuildContext&) const override {
    return std::make_shared<LinearAdapter>(in, out);
  }
};

void register_plugin(Registrar& r) { r.add_adapter(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::adapter::linear

FORGE_PLUGIN(forge::plugins::adapter::linear::register_plugin, "One linear projection per token")
