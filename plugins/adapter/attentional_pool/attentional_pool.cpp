// adapter/attentional_pool: [adapter] type = "attentional_pool".
//
// The patch grid is cut into pool_window x pool_window windows (row-major
// over windows and within each). Each window becomes one token: its query is
// the mean of its patches, which attends (pool_heads heads, scale
// 1/sqrt(in/heads)) over the window's patches; then o_proj (in -> in) and
// out_proj (in -> out). forge also accepts grids not divisible by the window
// (KempnerForge rejects them): an edge window attends over, and averages,
// its real patches only. Keys: {q,k,v,o,out}_proj.*.
#include <fmt/format.h>

#include "forge/forge.h"

namespace forge::plugins::adapter::attentional_pool {

class AttentionalPool final : public VisionAdapter {
 public:
  AttentionalPool(int64_t in, int64_t out, int64_t window, int64_t heads) : in_(in), window_(window), heads_(heads) {
    if (in % heads != 0)
      throw UserError(fmt::format("adapter attentional_pool: pool_heads = {} must divide the encoder width {}", heads,
                                  in));
    q_proj = register_module("q_proj", torch::nn::Linear(in, in));
    k_proj = register_module("k_proj", torch::nn::Linear(in, in));
    v_proj = register_module("v_proj", torch::nn::Linear(in, in));
    o_proj = register_module("o_proj", torch::nn::Linear(in, in));
    out_proj = register_module("out_proj", torch::nn::Linear(in, out));
  }

  at::Tensor forward(const at::Tensor& x) override { return pool(x, window_); }
  at::Tensor forward_window(const at::Tensor& x, int64_t window) override { return pool(x, window); }
  int64_t output_num_tokens(int64_t n) const override { return pooled_token_count(n, window_); }
  double forward_flops(int64_t n) const override {
    const double C = static_cast<double>(in_), W = static_cast<double>(output_num_tokens(n));
    const double D = static_cast<double>(out_proj->weight.size(0));
    // k, v over every patch; q, o, out per window; scores and mix per window.
    return 2.0 * (2 * n * C * C + W * (2 * C * C + C * D)) + 4.0 * W * window_ * window_ * C;
  }

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr}, out_proj{nullptr};

 private:
  // One token per w x w window: its mean queries the window's patches.
  at::Tensor pool(const at::Tensor& x, int64_t w) {
    const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
    const int64_t side = square_grid_side(N);
    const int64_t per = (side + w - 1) / w, padded = per * w, W = per * per, dh = C / heads_;
    at::Tensor grid = x.reshape({B, side, side, C});
    at::Tensor real = at::ones({side, side}, x.options().dtype(at::kBool));
    if (padded != side) {
      grid = at::constant_pad_nd(grid, {0, 0, 0, padded - side, 0, padded - side}, 0.0);
      real = at::constant_pad_nd(real.to(at::kFloat), {0, padded - side, 0, padded - side}, 0.0).to(at::kBool);
    }
    // (B, W, w*w, C) windows, row-major over windows and within a window.
    at::Tensor win = grid.reshape({B, per, w, per, w, C}).permute({0, 1, 3, 2, 4, 5}).reshape({B, W, w * w, C});
    at::Tensor mask = real.reshape({per, w, per, w}).permute({0, 2, 1, 3}).reshape({W, w * w});
    at::Tensor maskf = mask.to(x.scalar_type()).unsqueeze(-1);                                  // (W, w*w, 1)
    at::Tensor query = (win * maskf).sum(2) / maskf.sum(1).clamp_min(1.0);                   // (B, W, C)
    at::Tensor q = q_proj(query).reshape({B * W, 1, heads_, dh}).transpose(1, 2);           // (BW, h, 1, dh)
    at::Tensor k = k_proj(win).reshape({B * W, w * w, heads_, dh}).transpose(1, 2);         // (BW, h, w*w, dh)
    at::Tensor v = v_proj(win).reshape({B * W, w * w, heads_, dh}).transpose(1, 2);
    std::optional<at::Tensor> attn_mask;  // only ragged grids need one
    if (padded != side) attn_mask = mask.unsqueeze(0).expand({B, W, w * w}).reshape({B * W, 1, 1, w * w});
    at::Tensor o = at::scaled_dot_product_attention(q, k, v, attn_mask);  // (BW, h, 1, dh)
    o = o.transpose(1, 2).reshape({B, W, C});
    return out_proj(o_proj(o));
  }

  int64_t in_, window_, heads_;
};

class Plugin final : public AdapterPlugin {
 public:
  int64_t output_num_tokens(const AdapterConfig& cfg, int64_t n) const override {
    return pooled_token_count(n, cfg.pool_window);
  }
  void check(const AdapterConfig& cfg, const EncoderInfo& enc, ConfigVisitor& v) const override {
    v.require(enc.feature_dim % cfg.pool_heads == 0, "pool_heads",
              fmt::format("pool_heads = {} must divide the encoder's feature width {}", cfg.pool_heads,
                          enc.feature_dim));
  }
  std::shared_ptr<VisionAdapter> create(const AdapterConfig& cfg, int64_t in, int64_t out,
                                        const BuildContext&) const override {
    return std::make_shared<AttentionalPool>(in, out, cfg.pool_window, cfg.pool_heads);
  }
};

void register_plugin(Registrar& r) { r.add_adapter(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::adapter::attentional_pool

FORGE_PLUGIN(forge::plugins::adapter::attentional_pool::register_plugin,
             "Attention pooling per square window (mean-of-window query), then projects")
