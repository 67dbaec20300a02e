// ModalityContext invariants (spec section 2.7) and the interfaces' key functions.
#include "forge/modality.h"

#include <cmath>

#include <fmt/format.h>

#include "core/util/tensor.h"
#include "forge/error.h"
#include "forge/vision.h"

namespace forge {

using util::shape;

ModalityContext::ModalityContext(Fields fields) : f_(std::move(fields)) {
  const bool ie = f_.inputs_embeds.defined(), pe = f_.prefix_embeds.defined(), ifeat = f_.image_features.defined();
  if (int(ie) + int(pe) + int(ifeat) > 1)
    throw InvalidArgument(fmt::format(
        "ModalityContext: at most one of inputs_embeds, prefix_embeds and image_features may be set (got {}{}{})",
        ie ? "inputs_embeds " : "", pe ? "prefix_embeds " : "", ifeat ? "image_features" : ""));
  if (f_.image_mask.defined() && !ifeat)
    throw InvalidArgument("ModalityContext: image_mask requires image_features");
  if (f_.modality_ids.defined() && !(pe || ie))
    throw InvalidArgument("ModalityContext: modality_ids requires prefix_embeds or inputs_embeds");
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"inputs_embeds", &f_.inputs_embeds},
                         {"prefix_embeds", &f_.prefix_embeds},
                         {"image_features", &f_.image_features}}) {
    if (t->defined() && t->dim() != 3)
      throw InvalidArgument(fmt::format("ModalityContext: {} must be (B, N, D), got {}", name, shape(*t)));
  }
  if (f_.image_mask.defined()) {
    const auto& m = f_.image_mask;
    if (m.scalar_type() != at::kBool || m.dim() != 2 || m.size(0) != f_.image_features.size(0) ||
        m.size(1) != f_.image_features.size(1))
      throw InvalidArgument(fmt::format("ModalityContext: image_mask must be bool (B, N) = {} matching image_features, "
                                        "got {} {}",
                                        fmt::format("({}, {})", f_.image_features.size(0), f_.image_features.size(1)),
                                        c10::toString(m.scalar_type()), shape(m)));
  }
  if (f_.modality_ids.defined()) {
    const auto& m = f_.modality_ids;
    if (m.scalar_type() != at::kLong || m.dim() != 2)
      throw InvalidArgument(fmt::format("ModalityContext: modality_ids must be int64 (B, S), got {} {}",
                                        c10::toString(m.scalar_type()), shape(m)));
  }
  if (f_.key_padding_mask.defined()) {
    const auto& m = f_.key_padding_mask;
    if (m.scalar_type() != at::kBool || m.dim() != 2)
      throw InvalidArgument(fmt::format("ModalityContext: key_padding_mask must be bool (B, S), got {} {}",
                                        c10::toString(m.scalar_type()), shape(m)));
  }
  if (f_.output_slice && (f_.output_slice->start < 0 || f_.output_slice->length < -1))
    throw InvalidArgument(fmt::format("ModalityContext: output_slice start {} / length {} is invalid",
                                      f_.output_slice->start, f_.output_slice->length));
}

ModalityContext ModalityContext::with_output_slice(std::optional<OutputSlice> slice) const {
  Fields f = f_;
  f.output_slice = slice;
  return ModalityContext(std::move(f));
}

int64_t ModalityContext::prefix_length() const { return f_.prefix_embeds.defined() ? f_.prefix_embeds.size(1) : 0; }

ModalityStrategy::~ModalityStrategy() = default;
ModalityContext ModalityStrategy::decode_context(const ModalityContext&) const { return ModalityContext(); }

PrefixStrategy::PrefixStrategy(std::string name, bool modality_ids)
    : name_(std::move(name)), modality_ids_(modality_ids) {}

ModalityContext PrefixStrategy::compose(const at::Tensor& visual, const at::Tensor& input_ids) const {
  ModalityContext::Fields f;
  f.prefix_embeds = visual;
  if (modality_ids_) {
    const int64_t B = visual.size(0), N = visual.size(1), T = input_ids.size(1);
    auto opts = at::TensorOptions().dtype(at::kLong).device(input_ids.device());
    f.modality_ids = at::cat({at::zeros({B, N}, opts), at::ones({B, T}, opts)}, 1);
  }
  return ModalityContext(std::move(f));
}

// ------------------------------------------------------------ vision interfaces

static double parameter_count(const torch::nn::Module& m) {
  double n = 0;
  for (const auto& p : m.parameters(true)) n += static_cast<double>(p.numel());
  return n;
}

VisionEncoder::~VisionEncoder() = default;
double VisionEncoder::forward_flops() const { return 2.0 * parameter_count(*this) * static_cast<double>(num_tokens()); }

VisionAdapter::~VisionAdapter() = default;
at::Tensor VisionAdapter::forward_window(const at::Tensor& features, int64_t window) {
  return forward(window == 1 ? features : pool_grid(features, window));
}
double VisionAdapter::forward_flops(int64_t n) const {
  return 2.0 * parameter_count(*this) * static_cast<double>(output_num_tokens(n));
}

int64_t square_grid_side(int64_t n) {
  if (n <= 0) throw UserError(fmt::format("a pooling adapter needs a positive token count, got {}", n));
  auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  while (side * side > n) --side;
  while ((side + 1) * (side + 1) <= n) ++side;
  if (side * side != n)
    throw UserError(fmt::format("{} encoder tokens do not form a square grid ({}^2 = {}, {}^2 = {}), so they cannot "
                                "be pooled in 2-D windows; an encoder with a class token (CLS) would do this. Use an "
                                "encoder whose tokens are patches only (forge's clip strips its CLS), or an adapter "
                                "that does not pool (mlp_2layer, linear)",
                                n, side, side * side, side + 1, (side + 1) * (side + 1)));
  return side;
}

int64_t pooled_token_count(int64_t n, int64_t window) {
  if (window <= 0) throw UserError(fmt::format("pool_window must be > 0, got {}", window));
  const int64_t side = square_grid_side(n);
  const int64_t per_side = (side + window - 1) / window;
  return per_side * per_side;
}

at::Tensor pool_grid(const at::Tensor& x, int64_t w) {
  if (x.dim() != 3) throw InvalidArgument(fmt::format("pool_grid: tokens must be (B, N, C), got {}D", x.dim()));
  if (w <= 0) throw UserError(fmt::format("pool_window must be > 0, got {}", w));
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
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
  return mean.permute({0, 2, 3, 1}).reshape({B, per * per, C});
}

}  // namespace forge
