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

  at::Tensor forward(const at::Tensor& x) override {
    const int64_t B = x.size(0), N = x.size(1), C = x.size(2), w = window_;
    const int64_t side = square_grid_side(N);
    const int64_t per = (side + w - 1) / w, padded = per * w;
    at::Tensor grid = x.reshape({B, side, side, C}).permute({0, 3, 1, 2});  // (B, C, side, side)
    at::Tensor real = at::ones({1, 1, side, side}, x.options());
    if (padded != side) {
      grid = at::constant_pad_nd(grid, {0, padded - side, 0, padded - side}, 0.0);
      real = at::constant_pad_nd(real, {0, padded - side, 0, padded - side}, 0.0);
    }
    // Window sums over real cells / number of real cells.
    at::Tensor sums = at::avg_pool2d(grid, {w, w}, {w, w}) * static_cast<double>(w * w);
    at::Tensor counts = at::avg_pool2d(real, {w, w}, {w, w}) * static_cast<double>(w * w);
    at::Tensor mean = sums / counts.clamp_min(1.0);
    return proj(mean.permute({0, 2, 3, 1}).reshape({B, per * per, C}));
  }
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
