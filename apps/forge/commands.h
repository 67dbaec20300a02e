// The forge host's commands. main.cpp parses the command line (CLI11) and
// maps errors to exit codes; each command lives in its own function here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace forge::app {

// Options shared by commands that read a config.
struct ConfigArgs {
  std::string config;
  std::vector<std::string> overrides;     // --section.key=value
  std::vector<std::string> plugin_paths;  // --plugin-path
};

int cmd_version();
int cmd_plugins(const std::vector<std::string>& plugin_paths);
int cmd_validate(const ConfigArgs& args);
int cmd_config_reference(const std::vector<std::string>& plugin_paths);
int cmd_check_model(const ConfigArgs& args, int64_t batch);

}  // namespace forge::app
