// Core-side logging controls (the SDK side is forge/logging.h).
#pragma once

#include <string>

#include "forge/export.h"
#include "forge/logging.h"

namespace forge {

// "trace", "debug", "info", "warn", "error", "off"; applies to every logger.
FORGE_API void set_log_level(const std::string& level);
FORGE_API void flush_logs();

}  // namespace forge
