// One training forward and backward of a model and of its sharded copy on the same batch
// (tests of core/distributed/fsdp.h on the CPU and on CUDA).
#pragma once

#include <utility>

#include "core/distributed/fsdp.h"
#include "core/model/vlm.h"

namespace forge::test {

// Cross-entropy of `m` on (px, ids), the labels being the ids.
inline at::Tensor vlm_loss(VLM& m, const at::Tensor& px, const at::Tensor& ids) {
  VLMOutput out = m->forward(px, ids, ids);
  return at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}), out.targets.reshape({-1}));
}

// Backward through `plain`, then through `sharded` with its root unit gathered around the step and its
// gradients reduced into the shards after it. Returns {plain's loss, sharded's loss}.
inline std::pair<at::Tensor, at::Tensor> plain_and_sharded_step(VLM& plain, VLM& sharded, FullyShardedModel& fsdp,
                                                                const at::Tensor& px, const at::Tensor& ids) {
  at::Tensor want = vlm_loss(plain, px, ids);
  want.backward();
  fsdp.gather_root();
  at::Tensor got = vlm_loss(sharded, px, ids);
  got.backward();
  fsdp.reduce_root_grads();
  fsdp.release_root();
  return {want, got};
}

}  // namespace forge::test
