#include "core/distributed/nccl.h"

#include "forge/error.h"

#ifdef FORGE_WITH_NCCL
#ifndef USE_C10D_NCCL  // LibTorch's CMake target usually defines it already
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace forge::detail {

#ifdef FORGE_WITH_NCCL

bool nccl_available() { return true; }
std::string nccl_version() { return c10d::getNcclVersion(); }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                    std::chrono::milliseconds timeout, const at::Device& device) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
  // Bind the group to this rank's GPU: the communicator is created now, on
  // the right device, instead of at the first collective.
  pg->setBoundDeviceId(device);
  pg->eagerConnectSingleDevice(device);
  return pg;
}

#else

bool nccl_available() { return false; }
std::string nccl_version() { return ""; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                    std::chrono::milliseconds, const at::Device&) {
  throw UserError("this forge build has no NCCL (it was configured without CUDA's nccl.h)");
}

#endif

}  // namespace forge::detail
