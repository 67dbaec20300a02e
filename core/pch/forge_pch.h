// The precompiled header shared by every in-tree target (core, host, plugins,
// tests): parsing LibTorch's headers once saves most of each TU's compile time.
#pragma once

#include <torch/nn.h>
#include <torch/optim.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>
