// The core owns the log sinks: one stderr sink shared by the "forge" logger
// and every named child (plugins get "plugin.<kind>.<name>").
#include "forge/logging.h"

#include <cstdlib>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "core/util/logging.h"

namespace forge {

namespace {
std::mutex& mu() {
  static std::mutex m;
  return m;
}
spdlog::level::level_enum& current_level() {
  static spdlog::level::level_enum lvl = [] {
    const char* env = std::getenv("FORGE_LOG_LEVEL");
    return env ? spdlog::level::from_str(env) : spdlog::level::info;
  }();
  return lvl;
}
std::shared_ptr<spdlog::sinks::sink>& shared_sink() {
  static std::shared_ptr<spdlog::sinks::sink> sink = [] {
    auto s = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    s->set_pattern("%^[%H:%M:%S %L]%$ %v");
    return s;
  }();
  return sink;
}
}  // namespace

std::shared_ptr<spdlog::logger> named_logger(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu());
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, shared_sink());
  logger->set_level(current_level());
  if (name != "forge") logger->set_pattern("%^[%H:%M:%S %L]%$ [%n] %v");
  spdlog::register_logger(logger);
  return logger;
}

std::shared_ptr<spdlog::logger> log() {
  static std::shared_ptr<spdlog::logger> l = named_logger("forge");
  return l;
}

void set_log_level(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  {
    std::lock_guard<std::mutex> lock(mu());
    current_level() = lvl;
  }
  spdlog::apply_all([&](std::shared_ptr<spdlog::logger> l) { l->set_level(lvl); });
}

void flush_logs() {
  spdlog::apply_all([](std::shared_ptr<spdlog::logger> l) { l->flush(); });
}

}  // namespace forge
