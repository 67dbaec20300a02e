// adapter/scaled_linear: a linear projection times a configurable scale.
// [adapter] type = "scaled_linear", scale = 0.5
#include <forge/forge.h>

namespace forge::plugins::adapter::scaled_linear {

struct Config final : AdapterConfig {
  double scale = 1.0;
  void visit(ConfigVisitor& v) override {
    AdapterConfig::visit(v);
    v.field("scale", scale, "Multiplies the projected tokens.", Bounds::positive());
  }
};

class ScaledLinear final : public VisionAdapter {
 public:
  ScaledLinear(int64_t in, int64_t out, double scale) : scale_(scale) {
    proj = register_module("proj", torch::nn::Linear(in, out));
  }
  at::Tensor forward(const at::Tensor& x) override { return proj(x) * scale_; }
  int64_t output_num_tokens(int64_t n) const override { return n; }
  torch::nn::Linear proj{nullptr};

 private:
  double scale_;
};

class Plugin final : public AdapterPlugin {
 public:
  std::unique_ptr<AdapterConfig> make_config() const override { return std::make_unique<Config>(); }
  int64_t output_num_tokens(const AdapterConfig&, int64_t n) const override { return n; }
  std::shared_ptr<VisionAdapter> create(const AdapterConfig& cfg, int64_t in, int64_t out,
                                        const BuildContext& ctx) const override {
    ctx.logger->info("scaled_linear: {} -> {} x {}", in, out, static_cast<const Config&>(cfg).scale);
    return std::make_shared<ScaledLinear>(in, out, static_cast<const Config&>(cfg).scale);
  }
};

void register_plugin(Registrar& r) { r.add_adapter(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::adapter::scaled_linear

FORGE_PLUGIN(forge::plugins::adapter::scaled_linear::register_plugin, "Linear projection times a scale (out of tree)")
