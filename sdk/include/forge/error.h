// The one exception hierarchy of forge. It lives in libforge_core (key
// functions out of line), so a throw in a plugin and a catch in the core agree
// on the type. Every user-facing failure is a forge::Error whose message says
// what was wrong and what would fix it; exit_code() is what `forge` returns.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "forge/export.h"

namespace forge {

// Process exit codes used by the `forge` host.
enum ExitCode : int {
  kExitOk = 0,
  kExitRuntime = 1,  // the job itself failed (I/O while writing, divergence, ...)
  kExitUsage = 2,    // bad command line, config, plugin, or input file
};

class FORGE_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message);
  ~Error() override;
  virtual int exit_code() const noexcept;
};

// A failure while running a job (exit 1).
class FORGE_API RuntimeError : public Error {
 public:
  using Error::Error;
  ~RuntimeError() override;
};

// Bad arguments to a forge API: shapes, dtypes, contradictory inputs. The
// equivalent of Python's ValueError in the reference (exit 1: a program bug,
// not a user's config).
class FORGE_API InvalidArgument : public Error {
 public:
  using Error::Error;
  ~InvalidArgument() override;
};

// Everything a user can fix in their input: exit 2.
class FORGE_API UserError : public Error {
 public:
  using Error::Error;
  ~UserError() override;
  int exit_code() const noexcept override;
};

class FORGE_API UsageError : public UserError {
 public:
  using UserError::UserError;
  ~UsageError() override;
};

// A plugin that failed to load or register, or a lookup of one that is not
// there. The message names the file and the field.
class FORGE_API PluginError : public UserError {
 public:
  using UserError::UserError;
  ~PluginError() override;
};

// A malformed input file: checkpoint, safetensors, image, manifest,
// tokenizer. The message names the file (and the line or key).
class FORGE_API FormatError : public UserError {
 public:
  using UserError::UserError;
  ~FormatError() override;
};

// One problem found in a config, with where it is.
struct FORGE_API ConfigDiagnostic {
  std::string file;     // config file, or "command line"
  int line = 0;         // 1-based; 0 when unknown
  int column = 0;       // 1-based; 0 when unknown
  std::string key;      // dotted key, e.g. "model.dim"
  std::string message;  // what is wrong and what would fix it
  bool warning = false;
  std::string format() const;  // "file:line:col: error: [model] dim: message"
};

// One or more config errors, all reported together (exit 2).
class FORGE_API ConfigError : public UserError {
 public:
  explicit ConfigError(std::vector<ConfigDiagnostic> diagnostics);
  explicit ConfigError(const std::string& message);
  ~ConfigError() override;
  const std::vector<ConfigDiagnostic>& diagnostics() const noexcept { return diagnostics_; }

 private:
  std::vector<ConfigDiagnostic> diagnostics_;
};

}  // namespace forge
