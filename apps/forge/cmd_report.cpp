// forge report RUN_DIR: the run report as one HTML file (core/reporting/report.h).
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "apps/forge/commands.h"
#include "core/reporting/report.h"
#include "forge/error.h"

namespace fs = std::filesystem;

namespace forge::app {

int cmd_report(const std::string& run_dir, const std::string& out) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec))
    throw UserError(fmt::format("{}: no such folder; give the run folder (checkpoint.dir) of a forge train run",
                                run_dir));
  const std::string path = out.empty() ? (fs::path(run_dir) / "report.html").string() : out;
  write_run_report(run_dir, path);
  std::cout << fmt::format("report: {}\n", path);
  return kExitOk;
}

}  // namespace forge::app
