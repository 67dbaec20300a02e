// Logging. The core owns the sinks; everyone else asks for a named logger.
// Plugins get theirs ("plugin.<kind>.<name>") from the Registrar or the
// BuildContext and never create sinks or set the default logger.
#pragma once

#include <spdlog/logger.h>

#include <memory>
#include <string>

#include "forge/export.h"

namespace forge {

// The core's logger ("forge").
FORGE_API std::shared_ptr<spdlog::logger> log();
// A child logger sharing the core's sinks and level.
FORGE_API std::shared_ptr<spdlog::logger> named_logger(const std::string& name);

}  // namespace forge
