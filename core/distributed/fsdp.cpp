#include "core/distributed/fsdp.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>

#include <set>

#include <fmt/format.h>

#include "core/util/strings.h"
#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

struct ShardedParam {
  std::string name;  // the first of its names
  at::Tensor full;   // the module's parameter: whole-shaped, its storage freed while released
  at::Tensor shard;  // this rank's chunk: a leaf the optimizer owns
  int64_t numel = 0;
  int64_t chunk = 0;  // elements per rank (numel padded up to a multiple of the world size, divided)
  size_t bytes = 0;   // of the whole parameter
};

namespace {

c10::StorageImpl* storage_of(const at::Tensor& t) { return t.storage().unsafeGetStorageImpl(); }

void free_storage(const at::Tensor& t) {
  c10::StorageImpl* s = storage_of(t);
  s->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  s->set_nbytes(0);
}

void alloc_storage(const at::Tensor& t, size_t bytes) {
  c10::StorageImpl* s = storage_of(t);
  if (s->nbytes() == bytes) return;
  at::Allocator* a = s->allocator();
  if (!a) a = c10::GetAllocator(t.device().type());
  s->set_data_ptr_noswap(a->allocate(bytes));
  s->set_nbytes(bytes);
}

// Rank `rank`'s chunk of `whole`, flattened and zero-padded to chunks of `chunk` elements.
at::Tensor chunk_of(const at::Tensor& whole, int64_t chunk, int64_t rank, const at::TensorOptions& options) {
  const int64_t numel = whole.numel();
  at::Tensor out = at::zeros({chunk}, options.requires_grad(false));
  const int64_t start = std::min(rank * chunk, numel);
  const int64_t len = std::min(chunk, numel - start);
  if (len > 0) out.narrow(0, 0, len).copy_(whole.detach().reshape({-1}).narrow(0, start, len));
  return out;
}

}  // namespace

class ShardedUnit final : public ParamUnit {
 public:
  ShardedUnit(Distributed& dist, Distributed* replicas, std::vector<ShardedParam*> ps)
      : dist_(dist), replicas_(replicas), ps_(std::move(ps)) {
    for (auto* p : ps_) {
      offsets_.push_back(size_);
      size_ += p->chunk;
      params_.push_back(p->full);
    }
  }

  void set_prefetch(bool on) { prefetch_ = on; }
  void set_gather_dtype(at::ScalarType dtype) { gather_dtype_ = dtype; }

  void prefetch() override {
    if (!prefetch_ || depth_ > 0 || pending_ || ps_.empty()) return;  // off, already whole, or on its way
    start_gather();
  }

  void gather() override {
    if (depth_++ > 0 || ps_.empty()) return;
    if (!pending_) start_gather();
    pending_->wait();
    pending_.reset();
    torch::NoGradGuard no_grad;
    at::Tensor rows = recv_.view({dist_.world(), size_});
    for (size_t k = 0; k < ps_.size(); ++k) {
      ShardedParam& p = *ps_[k];
      alloc_storage(p.full, p.bytes);
      at::Tensor whole = rows.narrow(1, offsets_[k], p.chunk).reshape({-1}).narrow(0, 0, p.numel);
      // variable_data: the copy must not bump the version counter autograd saved the parameter with.
      p.full.variable_data().view({-1}).copy_(whole);
    }
    recv_.reset();
  }

  // A prefetch whose block never ran (its backward was not needed): wait for it and drop it.
  void settle() {
    if (!pending_) return;
    pending_->wait();
    pending_.reset();
    recv_.reset();
  }

  void release() override {
    if (depth_ == 0) throw InvalidArgument("sharded unit released more often than gathered");
    if (--depth_ > 0) return;
    for (auto* p : ps_) free_storage(p->full);
  }

  const std::vector<at::Tensor>& params() const override { return params_; }

  void reduce_grads(const std::vector<at::Tensor>& grads) override {
    if (grads.size() != ps_.size())
      throw InvalidArgument(fmt::format("sharded unit: {} gradients for {} parameters", grads.size(), ps_.size()));
    bool any = false;
    for (auto* p : ps_) any = any || p->full.requires_grad();
    if (!any) return;  // the same on every rank: freeze state is replicated
    torch::NoGradGuard no_grad;
    const int64_t W = dist_.world(), n = static_cast<int64_t>(ps_.size());
    // Row r: rank r's chunk of every gradient, then one "had a gradient" flag per parameter.
    at::Tensor in = at::zeros({W, size_ + n}, ps_[0]->shard.options().requires_grad(false));
    for (int64_t k = 0; k < n; ++k) {
      const at::Tensor& g = grads[static_cast<size_t>(k)];
      if (!g.defined()) continue;
      const ShardedParam& p = *ps_[static_cast<size_t>(k)];
      at::Tensor padded = at::zeros({W * p.chunk}, in.options());
      padded.narrow(0, 0, p.numel).copy_(g.reshape({-1}));
      in.narrow(1, offsets_[static_cast<size_t>(k)], p.chunk).copy_(padded.view({W, p.chunk}));
      in.select(1, size_ + k).fill_(1);
    }
    at::Tensor out = at::empty({size_ + n}, in.options());
    dist_.reduce_scatter_sum(out, in.view({-1}));
    double ranks = static_cast<double>(W);
    if (replicas_) {  // hybrid: the same shard on every replica group
      replicas_->all_reduce_sum(out);
      ranks *= replicas_->world();
    }
    at::Tensor flags = out.narrow(0, size_, n).to(at::kCPU);
    at::Tensor mean = out.narrow(0, 0, size_).div_(ranks);
    for (int64_t k = 0; k < n; ++k) {
      ShardedParam& p = *ps_[static_cast<size_t>(k)];
      if (flags[k].item<float>() == 0 || !p.full.requires_grad()) continue;
      at::Tensor g = mean.narrow(0, offsets_[static_cast<size_t>(k)], p.chunk);
      if (p.shard.grad().defined())
        p.shard.mutable_grad().add_(g);
      else
        p.shard.mutable_grad() = g.clone();
    }
  }

  const std::vector<ShardedParam*>& sharded() const { return ps_; }

 private:
  // Launches the all-gather of every rank's chunks into recv_.
  void start_gather() {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> parts;
    for (auto* p : ps_) parts.push_back(p->shard.detach());
    at::Tensor send = at::cat(parts);
    if (gather_dtype_ && send.scalar_type() != *gather_dtype_) send = send.to(*gather_dtype_);
    recv_ = at::empty({dist_.world() * size_}, send.options());
    pending_ = dist_.all_gather_async(recv_, send);
  }
  std::unique_ptr<Distributed::Pending> pending_;
  at::Tensor recv_;
  bool prefetch_ = true;
  std::optional<at::ScalarType> gather_dtype_;
  Distributed& dist_;
  Distributed* replicas_;
  std::vector<ShardedParam*> ps_;
  std::vector<at::Tensor> params_;
  std::vector<int64_t> offsets_;
  int64_t size_ = 0;  // elements of this rank's chunks together
  int depth_ = 0;
};

FullyShardedModel::FullyShardedModel(torch::nn::Module& model, const std::vector<std::string>& unit_prefixes,
                                     Distributed& dist, Distributed* replicas, std::optional<at::Device> device)
    : dist_(dist) {
  const int64_t W = dist.world(), rank = dist.rank();
  // Every name of every parameter (a tied one has several).
  std::vector<const void*> order;
  std::map<const void*, std::vector<std::string>> names;
  std::map<const void*, at::Tensor> tensors;
  for (const auto& item : model.named_parameters(true)) {
    const void* impl = item.value().unsafeGetTensorImpl();
    if (!names.count(impl)) order.push_back(impl);
    names[impl].push_back(item.key());
    tensors[impl] = item.value();
  }
  std::vector<std::vector<ShardedParam*>> members(unit_prefixes.size());
  std::vector<ShardedParam*> root;
  std::set<const void*> storages;
  torch::NoGradGuard no_grad;
  for (const void* impl : order) {
    const at::Tensor& t = tensors[impl];
    const std::string& name = names[impl].front();
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (!t.is_contiguous() || t.storage_offset() != 0 || t.storage().nbytes() != bytes ||
        !storages.insert(storage_of(t)).second)
      throw InvalidArgument(fmt::format("cannot shard parameter '{}': it shares or does not fill its storage", name));
    auto p = std::make_unique<ShardedParam>();
    p->name = name;
    p->full = t;
    p->numel = t.numel();
    p->chunk = (p->numel + W - 1) / W;
    p->bytes = bytes;
    const at::Device where = device.value_or(t.device());
    p->shard = chunk_of(t, p->chunk, rank, t.options().device(where));
    p->shard.requires_grad_(t.requires_grad());
    // The module's parameter moves to `where` as a shape without memory (freed below).
    if (where != t.device()) p->full.set_data(at::empty(t.sizes(), t.options().device(where).requires_grad(false)));
    // The unit whose prefix every one of its names has; else the root.
    int unit = -1;
    for (size_t u = 0; u < unit_prefixes.size() && unit < 0; ++u) {
      bool all = true;
      for (const auto& n : names[impl]) all = all && util::starts_with(n, unit_prefixes[u]);
      if (all) unit = static_cast<int>(u);
    }
    (unit < 0 ? root : members[static_cast<size_t>(unit)]).push_back(p.get());
    for (const auto& n : names[impl]) by_name_[n] = p.get();
    by_impl_[impl] = p.get();
    params_.push_back(std::move(p));
  }
  for (auto& m : members) units_.push_back(std::make_shared<ShardedUnit>(dist, replicas, std::move(m)));
  root_ = std::make_shared<ShardedUnit>(dist, replicas, std::move(root));
  for (auto& p : params_) free_storage(p->full);
}

FullyShardedModel::~FullyShardedModel() = default;

std::shared_ptr<ParamUnit> FullyShardedModel::unit(size_t i) const { return units_.at(i); }
size_t FullyShardedModel::units() const { return units_.size(); }

const ShardedParam& FullyShardedModel::find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw InvalidArgument(fmt::format("'{}' is not a sharded parameter", name));
  return *it->second;
}

at::Tensor FullyShardedModel::shard_of(const at::Tensor& param) const {
  auto it = by_impl_.find(param.unsafeGetTensorImpl());
  if (it == by_impl_.end()) throw InvalidArgument("shard_of: not a parameter of the sharded model");
  return it->second->shard;
}

bool FullyShardedModel::is_sharded(const std::string& name) const { return by_name_.count(name) > 0; }

std::vector<int64_t> FullyShardedModel::full_shape(const std::string& name) const {
  return find(name).full.sizes().vec();
}

at::Tensor FullyShardedModel::gather(const std::string& name, const at::Tensor& local) const {
  const ShardedParam& p = find(name);
  const at::Tensor part = local.unsafeGetTensorImpl() == p.full.unsafeGetTensorImpl() ? p.shard : local;
  if (part.numel() != p.chunk)
    throw InvalidArgument(fmt::format("gather '{}': {} elements, the shard has {}", name, part.numel(), p.chunk));
  torch::NoGradGuard no_grad;
  at::Tensor all = at::empty({dist_.world() * p.chunk}, part.options().requires_grad(false));
  dist_.all_gather(all, part.detach().reshape({-1}));
  return all.narrow(0, 0, p.numel).view(p.full.sizes()).clone();
}

at::Tensor FullyShardedModel::local(const std::string& name, const at::Tensor& full) const {
  const ShardedParam& p = find(name);
  if (full.sizes() != p.full.sizes())
    throw InvalidArgument(fmt::format("'{}' has shape {}, the parameter {}", name, util::shape(full),
                                      util::shape(p.full)));
  return chunk_of(full, p.chunk, dist_.rank(), full.options());
}

void FullyShardedModel::sync_requires_grad() {
  for (auto& p : params_) p->shard.requires_grad_(p->full.requires_grad());
}

void FullyShardedModel::gather_root() { root_->gather(); }

void FullyShardedModel::set_prefetch(bool on) {
  for (auto& u : units_) u->set_prefetch(on);
}

void FullyShardedModel::set_gather_dtype(at::ScalarType dtype) {
  for (auto& u : units_) u->set_gather_dtype(dtype);
  root_->set_gather_dtype(dtype);
}

void FullyShardedModel::reduce_root_grads() {
  std::vector<at::Tensor> grads;
  for (auto* p : root_->sharded()) grads.push_back(p->full.grad());
  root_->reduce_grads(grads);
  for (auto* p : root_->sharded()) p->full.mutable_grad().reset();
}

void FullyShardedModel::release_root() {
  root_->release();
  for (auto& u : units_) u->settle();
}

int64_t FullyShardedModel::local_numel() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p->chunk;
  return n;
}

int64_t FullyShardedModel::local_bytes() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p->chunk * p->shard.element_size();
  return n;
}

int64_t FullyShardedModel::total_numel() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p->numel;
  return n;
}

}  // namespace forge
