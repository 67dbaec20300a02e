#include "core/training/loss.h"

#include <fmt/format.h>

#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

LossValue cross_entropy(const at::Tensor& logits, const at::Tensor& targets, double z_loss_weight) {
  if (logits.dim() != 3 || targets.dim() != 2 || logits.size(0) != targets.size(0) || logits.size(1) != targets.size(1))
    throw InvalidArgument(fmt::format("loss: logits {} and targets {} do not align", util::shape(logits),
                                      util::shape(targets)));
  at::Tensor flat = logits.flatten(0, 1).to(at::kFloat);
  at::Tensor tgt = targets.flatten();
  at::Tensor valid = tgt.ne(-100);
  const int64_t n = valid.sum().item<int64_t>();
  // Sum over valid targets / max(n, 1): with n = 0 the sum is an exact 0 that
  // keeps the graph (zero gradients), never NaN.
  at::Tensor ce = at::cross_entropy_loss(flat, tgt, {}, at::Reduction::Sum, -100);
  at::Tensor loss = ce / static_cast<double>(std::max<int64_t>(n, 1));
  if (z_loss_weight > 0) {
    at::Tensor lse = at::logsumexp(flat, -1);
    at::Tensor z = (lse.pow(2) * valid.to(at::kFloat)).sum() / static_cast<double>(std::max<int64_t>(n, 1));
    loss = loss + z_loss_weight * z;
  }
  return LossValue{loss, n};
}

}  // namespace forge
