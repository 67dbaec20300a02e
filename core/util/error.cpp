// Key functions of the exception hierarchy: their typeinfo and vtables live
// here, in libforge_core, once for the whole process.
#include "forge/error.h"

#include <fmt/format.h>

namespace forge {

Error::Error(const std::string& message) : std::runtime_error(message) {}
Error::~Error() = default;
int Error::exit_code() const noexcept { return kExitRuntime; }

RuntimeError::~RuntimeError() = default;
InvalidArgument::~InvalidArgument() = default;
UserError::~UserError() = default;
int UserError::exit_code() const noexcept { return kExitUsage; }
UsageError::~UsageError() = default;
PluginError::~PluginError() = default;
FormatError::~FormatError() = default;

std::string ConfigDiagnostic::format() const {
  std::string where = file.empty() ? std::string("<config>") : file;
  if (line > 0) where += fmt::format(":{}", line);
  if (line > 0 && column > 0) where += fmt::format(":{}", column);
  std::string what;
  if (!key.empty()) {
    auto dot = key.rfind('.');
    what = dot == std::string::npos ? fmt::format("[{}]: ", key)
                                    : fmt::format("[{}] {}: ", key.substr(0, dot), key.substr(dot + 1));
  }
  return fmt::format("{}: {}: {}{}", where, warning ? "warning" : "error", what, message);
}

static std::string join_diagnostics(const std::vector<ConfigDiagnostic>& diags) {
  std::string out;
  for (const auto& d : diags) {
    if (d.warning) continue;
    if (!out.empty()) out += '\n';
    out += d.format();
  }
  return out.empty() ? std::string("invalid config") : out;
}

ConfigError::ConfigError(std::vector<ConfigDiagnostic> diagnostics)
    : UserError(join_diagnostics(diagnostics)), diagnostics_(std::move(diagnostics)) {}
ConfigError::ConfigError(const std::string& message) : UserError(message) {}
ConfigError::~ConfigError() = default;

}  // namespace forge
