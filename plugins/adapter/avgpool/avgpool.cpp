// adapter/avgpool: [adapter] type = "avgpool".
//
// The N patch tokens form a square grid (row-major). Each pool_window x
// pool_window window is averaged into one token (windows row-major); a
// ragged edge window averages only its real cells. Then Linear(in -> out).
// 196 tokens, window 2 -> 49; 729, window 2 -> 196. Keys: proj.*.
#include "forge/forge.h"

namespace forge::plugins::adapter::avgpool {

class AvgPool final : public VisionAdapter {
 public:
  AvgPool(int64_t in, int64_t out, int64_t window) : window_(window) {
    proj = register_module("proj", torch::nn::Linear(in, out));
  }

  at::Tensor forward(const at::Tensor& x) override { return proj(pool_grid(x, window_)); }
  at::Tensor forward_window(const at::Tensor& x, int64_t window) override { return proj(pool_grid(x, window)); }
  int64_t output_num_tokens(int64_t n) const override { return pooled_token_count(n, window_); }
  double forward_flops(int64_t n) const override {
    return 2.0 * static_cast<double>(proj->weight.numel()) * static_cast<double>(output_num_tokens(n));
  }

  torch::nn::Linear proj{nullptr};

 private:
  int64_t window_;
};

class Plugin final : public AdapterPlugin {
 public:
  int64_t output_num_tokens(const AdapterConfig& cfg, int64_t n) const override {
    return pooled_token_count(n, cfg.pool_window);
  }
  std::shared_ptr<VisionAdapter> create(const AdapterConfig& cfg, int64_t in, int64_t out,
                                        const BuildContext&) const override {
    return std::make_shared<AvgPool>(in, out, cfg.pool_window);
  }
};

void register_plugin(Registrar& r) { r.add_adapter(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::adapter::avgpool

FORGE_PLUGIN(forge::plugins::adapter::avgpool::register_plugin,
             "Average-pools square windows of patch tokens (ragged edges over real cells), then projects")
