// The three ConfigVisitors the core runs over every config section:
// TomlReader (TOML -> struct, with located diagnostics), TomlWriter
// (struct -> TOML text) and DocWriter (struct -> reference documentation).
#pragma once

#include <toml++/toml.h>

#include <set>
#include <string>
#include <vector>

#include "forge/config.h"
#include "forge/error.h"

namespace forge::config {

// Collects located errors and warnings.
class FORGE_API Diagnostics {
 public:
  explicit Diagnostics(std::string default_file = "") : default_file_(std::move(default_file)) {}
  // `where` may be null: then the location is the default file with no line.
  void add(const toml::node* where, const std::string& key, const std::string& message, bool warning);
  void error(const toml::node* where, const std::string& key, const std::string& message) {
    add(where, key, message, false);
  }
  void warning(const toml::node* where, const std::string& key, const std::string& message) {
    add(where, key, message, true);
  }
  bool has_errors() const;
  const std::vector<ConfigDiagnostic>& all() const { return items_; }
  std::vector<ConfigDiagnostic> warnings() const;
  const std::string& default_file() const { return default_file_; }
  // Throws ConfigError carrying every diagnostic when there is an error.
  void throw_if_errors() const;

 private:
  std::string default_file_;
  std::vector<ConfigDiagnostic> items_;
};

// Short TOML rendering of a node for messages: 42, "abc", [1, 2], a table.
FORGE_API std::string describe_node(const toml::node& n);

class FORGE_API TomlReader final : public ConfigVisitor {
 public:
  // table: the section's table (null when the section is absent);
  // section: dotted name used in messages ("model", "vlm.freeze[0]");
  // anchor: node used to locate errors about absent keys (the section itself, or its parent).
  TomlReader(const toml::table* table, std::string section, Diagnostics& diags, const toml::node* anchor);

  void field(std::string_view key, int64_t& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, std::optional<int64_t>& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, double& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, bool& value, std::string_view help) override;
  void field(std::string_view key, std::string& value, std::string_view help, const Choices& choices) override;
  void field(std::string_view key, std::optional<std::string>& value, std::string_view help) override;
  void field(std::string_view key, std::vector<std::string>& value, std::string_view help) override;
  void field(std::string_view key, std::vector<double>& value, std::string_view help, size_t length,
             Bounds bounds) override;
  void field(std::string_view key, StringListMap& value, std::string_view help) override;
  void field(std::string_view key, IntMap& value, std::string_view help, Bounds bounds) override;
  void tables(std::string_view key, TableList& list, std::string_view help) override;
  void unimplemented(std::string_view key, std::string_view note) override;
  void unsupported(std::string_view key, std::string_view note, std::string_view neutral) override;
  void require(bool ok, std::string_view key, const std::string& message) override;
  void warn(std::string_view key, const std::string& message) override;
  bool reading() const override { return true; }

  // Reports every key of the table that no field claimed, with a "did you
  // mean" suggestion. `foreign` maps keys that belong to another variant of
  // this section (e.g. another arch's [vlm] fields) to a hint.
  void finish(const std::vector<std::pair<std::string, std::string>>& foreign = {});

  const std::vector<std::string>& known_keys() const { return known_; }
  const toml::node* node(std::string_view key) const;
  const std::string& section() const { return section_; }

 private:
  std::string qualified(std::string_view key) const;
  const toml::node* where(std::string_view key) const;
  void error(std::string_view key, const std::string& message);
  bool check_bounds(std::string_view key, double v, const Bounds& b);

  const toml::table* table_;
  std::string section_;
  Diagnostics& diags_;
  const toml::node* anchor_;
  std::vector<std::string> known_;
  std::vector<std::string> ignored_;  // accepted-but-ignored keys (not listed as valid)
};

// Writes the fields as TOML: "key = value" lines, or one inline table.
class FORGE_API TomlWriter final : public ConfigVisitor {
 public:
  explicit TomlWriter(bool inline_table = false) : inline_(inline_table) {}

  void field(std::string_view key, int64_t& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, std::optional<int64_t>& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, double& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, bool& value, std::string_view help) override;
  void field(std::string_view key, std::string& value, std::string_view help, const Choices& choices) override;
  void field(std::string_view key, std::optional<std::string>& value, std::string_view help) override;
  void field(std::string_view key, std::vector<std::string>& value, std::string_view help) override;
  void field(std::string_view key, std::vector<double>& value, std::string_view help, size_t length,
             Bounds bounds) override;
  void field(std::string_view key, StringListMap& value, std::string_view help) override;
  void field(std::string_view key, IntMap& value, std::string_view help, Bounds bounds) override;
  void tables(std::string_view key, TableList& list, std::string_view help) override;
  void unimplemented(std::string_view, std::string_view) override {}
  void require(bool, std::string_view, const std::string&) override {}
  void warn(std::string_view, const std::string&) override {}
  bool reading() const override { return false; }

  std::string str() const;

  static std::string format_string(std::string_view s);
  static std::string format_double(double v);
  static std::string format_key(std::string_view k);

 private:
  void put(std::string_view key, const std::string& value);
  void unset(std::string_view key, std::string_view help);
  bool inline_;
  std::vector<std::string> items_;
};

// Collects one documentation row per field.
class FORGE_API DocWriter final : public ConfigVisitor {
 public:
  struct Row {
    std::string key;
    std::string type;
    std::string default_value;  // TOML, or "unset"
    std::string rule;           // bounds / choices
    std::string help;
    bool implemented = true;
    std::string neutral;  // unsupported keys: the one value accepted
  };
  explicit DocWriter(std::string prefix = "") : prefix_(std::move(prefix)) {}

  void field(std::string_view key, int64_t& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, std::optional<int64_t>& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, double& value, std::string_view help, Bounds bounds) override;
  void field(std::string_view key, bool& value, std::string_view help) override;
  void field(std::string_view key, std::string& value, std::string_view help, const Choices& choices) override;
  void field(std::string_view key, std::optional<std::string>& value, std::string_view help) override;
  void field(std::string_view key, std::vector<std::string>& value, std::string_view help) override;
  void field(std::string_view key, std::vector<double>& value, std::string_view help, size_t length,
             Bounds bounds) override;
  void field(std::string_view key, StringListMap& value, std::string_view help) override;
  void field(std::string_view key, IntMap& value, std::string_view help, Bounds bounds) override;
  void tables(std::string_view key, TableList& list, std::string_view help) override;
  void unimplemented(std::string_view key, std::string_view note) override;
  void unsupported(std::string_view key, std::string_view note, std::string_view neutral) override;
  void require(bool, std::string_view, const std::string&) override {}
  void warn(std::string_view, const std::string&) override {}
  bool reading() const override { return false; }

  const std::vector<Row>& rows() const { return rows_; }
  // A Markdown table of the rows (implemented keys), then a list of the
  // accepted-but-ignored ones.
  std::string markdown() const;

 private:
  void row(std::string_view key, std::string type, std::string def, std::string rule, std::string_view help);
  std::string prefix_;
  std::vector<Row> rows_;
};

}  // namespace forge::config
