// c10d's NCCL process group, behind a small seam so only nccl.cpp includes
// its (heavy, CUDA-only) headers. Compiled in when the build finds CUDA and
// nccl.h (FORGE_WITH_NCCL); otherwise nccl_available() is false.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <string>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace forge::detail {

// True when this build includes c10d's NCCL backend.
bool nccl_available();
// NCCL's version ("2.27.7"), or "" without NCCL.
std::string nccl_version();

// A NCCL process group of `world` ranks bound to `device` (a CUDA device).
// Throws when nccl_available() is false.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                    std::chrono::milliseconds timeout, const at::Device& device);

}  // namespace forge::detail
