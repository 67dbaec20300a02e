// adapter/mlp_2layer: [adapter] type = "mlp_2layer" (the default).
// Linear(in -> hidden) -> activation -> Linear(hidden -> out), per token.
// hidden = [adapter] hidden_dim, or model.dim when 0. Keys: proj1.*, proj2.*.
#include <fmt/format.h>

#include "forge/forge.h"

namespace forge::plugins::adapter::mlp_2layer {

class Mlp2Layer final : public VisionAdapter {
 public:
  Mlp2Layer(int64_t in, int64_t hidden, int64_t out, std::string activation) : activation_(std::move(activation)) {
    proj1 = register_module("proj1", torch::nn::Linear(in, hidden));
    proj2 = register_module("proj2", torch::nn::Linear(hidden, out));
  }
  // Each projection through nn::packed_linear: proj(x) itself, with fp32 weight gradients under CPU bf16 autocast.
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = nn::packed_linear(x, {proj1.get()});
    if (activation_ == "gelu") {
      h = at::gelu(h);
    } else if (activation_ == "silu") {
      h = at::silu(h);
    } else {
      h = at::relu(h);
    }
    return nn::packed_linear(h, {proj2.get()});
  }
  int64_t output_num_tokens(int64_t n) const override { return n; }

  torch::nn::Linear proj1{nullptr}, proj2{nullptr};

 private:
  std::string activation_;
};

class Plugin final : public AdapterPlugin {
 public:
  int64_t output_num_tokens(const AdapterConfig&, int64_t n) const override { return n; }
  std::shared_ptr<VisionAdapter> create(const AdapterConfig& cfg, int64_t in, int64_t out,
                                        const BuildContext&) const override {
    return std::make_shared<Mlp2Layer>(in, cfg.hidden_dim > 0 ? cfg.hidden_dim : out, out, cfg.activation);
  }
};

void register_plugin(Registrar& r) { r.add_adapter(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::adapter::mlp_2layer

FORGE_PLUGIN(forge::plugins::adapter::mlp_2layer::register_plugin,
             "Two-layer MLP per token (Linear, activation, Linear); keeps the token count")
