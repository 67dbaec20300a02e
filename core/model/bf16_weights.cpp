// bf16_weights.h: one registry for the process, under a mutex.
#include "core/model/bf16_weights.h"

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace forge::bf16_weights {

namespace {

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// One packed matrix: its weights (held weakly: a dead weight's entry is dropped), where each one's rows start,
// and the version each weight had when its rows were last written.
struct Packing {
  std::vector<WeakImpl> weights;
  std::vector<int64_t> offset, rows, version;
  std::vector<const void*> data;  // where each weight's values were: a weight given new storage is cast again
  at::Tensor matrix;
};

struct Registry {
  std::mutex mu;
  // Registered weights by address. The weak reference keeps the address from being reused while it is here.
  std::map<const c10::TensorImpl*, WeakImpl> registered;
  std::map<std::vector<const c10::TensorImpl*>, std::shared_ptr<Packing>> packings;

  bool is_registered(const at::Tensor& w) {
    auto it = registered.find(w.unsafeGetTensorImpl());
    return it != registered.end() && !it->second.expired();
  }
  // The packing that copy_of hands the optimizer for a weight, and the weight's place in it: the first, in key
  // order, that holds it alive; {nullptr, 0} if none does.
  std::pair<Packing*, size_t> locate(const c10::TensorImpl* impl) {
    for (auto& [key, packing] : packings)
      for (size_t i = 0; i < key.size(); ++i)
        if (key[i] == impl && !packing->weights[i].expired()) return {packing.get(), i};
    return {nullptr, 0};
  }
  // Drops the packings and registrations of weights that no longer exist.
  void prune() {
    for (auto it = registered.begin(); it != registered.end();) it = it->second.expired() ? registered.erase(it) : ++it;
    for (auto it = packings.begin(); it != packings.end();) {
      bool dead = false;
      for (const auto& w : it->second->weights) dead = dead || w.expired();
      it = dead ? packings.erase(it) : ++it;
    }
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

at::Tensor cast_stacked(at::TensorList weights) {
  int64_t n = 0;
  for (const auto& w : weights) n += w.size(0);
  at::Tensor out = at::empty({n, weights[0].size(1)}, weights[0].options().dtype(at::kBFloat16));
  int64_t at_row = 0;
  for (const auto& w : weights) {
    out.narrow(0, at_row, w.size(0)).copy_(w);
    at_row += w.size(0);
  }
  return out;
}

}  // namespace

at::Tensor packed(at::TensorList weights) {
  at::NoGradGuard no_grad;  // a cast of the values: no autograd history on the kept matrix
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<const c10::TensorImpl*> key;
  bool keep = !weights.empty();
  for (const auto& w : weights) {
    key.push_back(w.unsafeGetTensorImpl());
    keep = keep && w.dim() == 2 && w.scalar_type() == at::kFloat && w.device().is_cpu() && r.is_registered(w);
  }
  if (!keep) return cast_stacked(weights);
  auto found = r.packings.find(key);
  bool fresh = found != r.packings.end();
  for (size_t i = 0; fresh && i < weights.size(); ++i)
    fresh = !found->second->weights[i].expired();  // else an address reused by a new weight: packed afresh
  Packing* kept = fresh ? found->second.get() : nullptr;
  if (!fresh) {
    r.prune();
    auto p = std::make_shared<Packing>();
    int64_t at_row = 0;
    for (const auto& w : weights) {
      p->weights.emplace_back(w.getIntrusivePtr());
      p->offset.push_back(at_row);
      p->rows.push_back(w.size(0));
      p->version.push_back(-1);
      p->data.push_back(nullptr);
      at_row += w.size(0);
    }
    p->matrix = at::empty({at_row, weights[0].size(1)}, weights[0].options().dtype(at::kBFloat16));
    r.packings[key] = p;
    kept = p.get();
  }
  Packing& p = *kept;
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t v = static_cast<int64_t>(weights[i]._version());
    const void* d = weights[i].const_data_ptr();
    if (p.version[i] == v && p.data[i] == d) continue;
    p.matrix.narrow(0, p.offset[i], p.rows[i]).copy_(weights[i]);  // bumps the matrix's version, as it should
    p.version[i] = v;
    p.data[i] = d;
  }
  return p.matrix;
}

at::Tensor copy_of(const at::Tensor& p) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const c10::TensorImpl* impl = p.unsafeGetTensorImpl();
  auto it = r.registered.find(impl);
  if (it == r.registered.end() || it->second.expired()) {
    r.prune();  // a new registration: the weights of a model that is gone leave with their copies
    r.registered.insert_or_assign(impl, WeakImpl(p.getIntrusivePtr()));
  }
  const auto [packing, i] = r.locate(impl);
  return packing ? packing->matrix.narrow(0, packing->offset[i], packing->rows[i]) : at::Tensor();
}

void mark_current(const at::Tensor& p) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  // The packing copy_of returned; any other that holds p casts it again when next used.
  const auto [packing, i] = r.locate(p.unsafeGetTensorImpl());
  if (!packing) return;
  packing->version[i] = static_cast<int64_t>(p._version());
  packing->data[i] = p.const_data_ptr();
  packing->matrix.unsafeGetTensorImpl()->bump_version();
}

void clear() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.packings.clear();
  r.registered.clear();
}

}  // namespace forge::bf16_weights
