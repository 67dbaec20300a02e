// Data parallelism on LibTorch's c10d: Gloo on CPUs, NCCL on GPUs (when the
// build found nccl.h; else Gloo through host memory, with a warning).
//
// Processes are started either by `forge train --nproc N` (one machine) or
// by any launcher that sets the torchrun variables RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT (and LOCAL_RANK for the GPU). Each rank trains on
// its slice of every batch; core/distributed/data_parallel.h decides whether
// ranks replicate or shard the model. c10d stays behind this interface (its
// headers are included in dist.cpp only).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <memory>
#include <string>
#include <vector>

#include "core/config/job.h"

namespace c10d {
class Work;
}
#include "forge/export.h"

namespace forge {

class FORGE_API Distributed {
 public:
  // World size 1 (no process group) unless WORLD_SIZE > 1 is set.
  static std::unique_ptr<Distributed> from_env(const DistributedConfig& cfg, const at::Device& device);
  // Joins (rank 0: hosts) the rendezvous at addr:port and builds the process
  // group the config names for `device`: NCCL on a CUDA device (when this
  // build has it), Gloo otherwise. A world of 1 is allowed (tests use it).
  static std::unique_ptr<Distributed> connect(const DistributedConfig& cfg, const at::Device& device, int rank,
                                              int world, const std::string& addr, int port);
  ~Distributed();
  // Whether this build includes c10d's NCCL backend (CUDA and nccl.h found).
  static bool has_nccl();
  // A process group over `ranks` (global ranks, this one among them) with
  // its own rank numbering, on the same backend and rendezvous. Every rank
  // in `ranks` must call it with the same `name`.
  std::unique_ptr<Distributed> subgroup(const std::vector<int>& ranks, const std::string& name) const;

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool is_main() const { return rank_ == 0; }
  const std::string& backend() const { return backend_; }

  // Sums or takes the max of a number over ranks.
  double sum(double v);
  double max(double v);
  // out (world * n elements) = every rank's `in` (n elements), in rank order.
  void all_gather(const at::Tensor& out, const at::Tensor& in);
  // out (n elements) = this rank's n-element slice of the sum over ranks of
  // `in` (world * n elements).
  void reduce_scatter_sum(const at::Tensor& out, const at::Tensor& in);
  // Sums a tensor over ranks in place.
  void all_reduce_sum(const at::Tensor& t);
  // Starts summing `t` over ranks in place; wait() on the handle completes
  // it (failures are reported as by the blocking collectives).
  class Pending {
   public:
    virtual ~Pending();
    virtual void wait() = 0;
  };
  std::unique_ptr<Pending> all_reduce_sum_async(const at::Tensor& t, const char* what);
  // all_gather without waiting (out must stay alive until wait()).
  std::unique_ptr<Pending> all_gather_async(const at::Tensor& out, const at::Tensor& in);
  // Copies rank 0's tensors to every rank.
  void broadcast(const std::vector<at::Tensor>& tensors);
  void barrier();
  // Waits for a collective; a failure (a timeout: another rank died or hangs) becomes a RuntimeError that says so.
  void finish_work(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const;

  struct Impl;

 private:
  Distributed() = default;
  double reduce(double v, bool take_max);
  int64_t timeout_sec_ = 0;
  int rank_ = 0;
  int world_ = 1;
  std::string backend_ = "none";
  std::unique_ptr<Impl> impl_;
};

// dp_shard after resolving -1 against the world size and dp_replicate; a
// layout the world cannot honour is a UserError that names the numbers.
FORGE_API int64_t resolved_dp_shard(const DistributedConfig& cfg, int64_t world);

// Starts `forge` again as `nproc` local ranks (the same arguments, less
// --nproc) with the torchrun variables set, waits for all of them and returns
// the first non-zero exit code (stopping the others when one fails).
FORGE_API int launch_local_ranks(int nproc, const std::vector<std::string>& args);

}  // namespace forge
