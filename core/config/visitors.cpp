#include "core/config/visitors.h"

#include <cmath>
#include <sstream>

#include <fmt/format.h>

#include "core/util/strings.h"

namespace forge::config {

// ------------------------------------------------------------ Diagnostics

void Diagnostics::add(const toml::node* where, const std::string& key, const std::string& message, bool warning) {
  ConfigDiagnostic d;
  d.file = default_file_;
  if (where) {
    const auto& src = where->source();
    if (src.path && !src.path->empty()) d.file = *src.path;
    d.line = static_cast<int>(src.begin.line);
    d.column = static_cast<int>(src.begin.column);
    // Values given on the command line carry their own text as "file".
    if (util::starts_with(d.file, "command line")) d.line = d.column = 0;
  }
  d.key = key;
  d.message = message;
  d.warning = warning;
  for (const auto& e : items_) {  // the same finding twice (e.g. two visits) is reported once
    if (e.file == d.file && e.line == d.line && e.column == d.column && e.key == d.key && e.message == d.message)
      return;
  }
  items_.push_back(std::move(d));
}

bool Diagnostics::has_errors() const {
  for (const auto& d : items_)
    if (!d.warning) return true;
  return false;
}

std::vector<ConfigDiagnostic> Diagnostics::warnings() const {
  std::vector<ConfigDiagnostic> out;
  for (const auto& d : items_)
    if (d.warning) out.push_back(d);
  return out;
}

void Diagnostics::throw_if_errors() const {
  if (has_errors()) throw ConfigError(items_);
}

std::string describe_node(const toml::node& n) {
  std::ostringstream os;
  if (n.is_table()) return "a table";
  if (n.is_array_of_tables()) return "an array of tables";
  if (auto str = n.as_string()) {
    os << TomlWriter::format_string(str->get());
  } else {
    n.visit([&](auto&& v) { os << v; });
  }
  std::string s = os.str();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  const char* kind = "";
  switch (n.type()) {
    case toml::node_type::string: kind = "a string "; break;
    case toml::node_type::integer: kind = "an integer "; break;
    case toml::node_type::floating_point: kind = "a float "; break;
    case toml::node_type::boolean: kind = "a boolean "; break;
    case toml::node_type::array: kind = "an array "; break;
    default: kind = "";
  }
  return std::string(kind) + s;
}

// ------------------------------------------------------------ TomlReader

TomlReader::TomlReader(const toml::table* table, std::string section, Diagnostics& diags, const toml::node* anchor)
    : table_(table), section_(std::move(section)), diags_(diags), anchor_(anchor ? anchor : table) {}

std::string TomlReader::qualified(std::string_view key) const { return section_ + "." + std::string(key); }

const toml::node* TomlReader::node(std::string_view key) const { return table_ ? table_->get(key) : nullptr; }

const toml::node* TomlReader::where(std::string_view key) const {
  const toml::node* n = node(key);
  return n ? n : anchor_;
}

void TomlReader::error(std::string_view key, const std::string& message) {
  diags_.error(where(key), qualified(key), message);
}

bool TomlReader::check_bounds(std::string_view key, double v, const Bounds& b) {
  if (b.contains(v)) return true;
  error(key, fmt::format("got {}; {}", TomlWriter::format_double(v), b.describe()));
  return false;
}

static std::string expected(const char* what, const toml::node& n) {
  return fmt::format("expected {}, got {}", what, describe_node(n));
}

void TomlReader::field(std::string_view key, int64_t& value, std::string_view, Bounds bounds) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  int64_t v = 0;
  if (auto i = n->as_integer()) {
    v = i->get();
  } else if (auto f = n->as_floating_point(); f && std::isfinite(f->get()) && std::floor(f->get()) == f->get() &&
                                               std::fabs(f->get()) < 9.2e18) {  // within int64_t
    v = static_cast<int64_t>(f->get());
  } else {
    error(key, expected("an integer", *n));
    return;
  }
  if (check_bounds(key, static_cast<double>(v), bounds)) value = v;
}

void TomlReader::field(std::string_view key, std::optional<int64_t>& value, std::string_view help, Bounds bounds) {
  if (!node(key)) {
    known_.emplace_back(key);
    return;
  }
  int64_t v = value.value_or(0);
  size_t before = diags_.all().size();
  field(key, v, help, bounds);
  if (diags_.all().size() == before) value = v;
}

void TomlReader::field(std::string_view key, double& value, std::string_view, Bounds bounds) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  double v = 0;
  if (auto f = n->as_floating_point()) {
    v = f->get();
  } else if (auto i = n->as_integer()) {
    v = static_cast<double>(i->get());
  } else {
    error(key, expected("a number", *n));
    return;
  }
  if (check_bounds(key, v, bounds)) value = v;
}

void TomlReader::field(std::string_view key, bool& value, std::string_view) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  if (auto b = n->as_boolean()) {
    value = b->get();
  } else {
    error(key, expected("true or false", *n));
  }
}

void TomlReader::field(std::string_view key, std::string& value, std::string_view, const Choices& choices) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  auto s = n->as_string();
  if (!s) {
    error(key, expected("a string", *n) +
                   (choices.empty() ? fmt::format("; write it in quotes: {} = \"...\"", key)
                                    : "; accepted values (in quotes): " + util::quoted_list(choices)));
    return;
  }
  const std::string& v = s->get();
  if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
    std::string hint = util::did_you_mean(v, choices);
    error(key, fmt::format("got \"{}\"; accepted values: {}{}", v, util::quoted_list(choices),
                           hint.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", hint)));
    return;
  }
  value = v;
}

void TomlReader::field(std::string_view key, std::optional<std::string>& value, std::string_view help) {
  if (!node(key)) {
    known_.emplace_back(key);
    return;
  }
  std::string v = value.value_or("");
  size_t before = diags_.all().size();
  field(key, v, help, Choices{});
  if (diags_.all().size() == before) value = v;
}

void TomlReader::field(std::string_view key, std::vector<std::string>& value, std::string_view) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  if (auto s = n->as_string()) {  // a single string is a one-element list
    value = {s->get()};
    return;
  }
  auto arr = n->as_array();
  if (!arr) {
    error(key, expected("a list of strings", *n));
    return;
  }
  std::vector<std::string> out;
  for (const auto& el : *arr) {
    auto s = el.as_string();
    if (!s) {
      diags_.error(&el, qualified(key), expected("a list of strings; an element is not a string:", el));
      return;
    }
    out.push_back(s->get());
  }
  value = std::move(out);
}

void TomlReader::field(std::string_view key, std::vector<double>& value, std::string_view, size_t length,
                       Bounds bounds) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  auto arr = n->as_array();
  if (!arr) {
    error(key, expected(length ? fmt::format("a list of {} numbers", length).c_str() : "a list of numbers", *n));
    return;
  }
  if (length && arr->size() != length) {
    error(key, fmt::format("expected a list of {} numbers, got {}", length, arr->size()));
    return;
  }
  std::vector<double> out;
  for (const auto& el : *arr) {
    double v;
    if (auto f = el.as_floating_point()) {
      v = f->get();
    } else if (auto i = el.as_integer()) {
      v = static_cast<double>(i->get());
    } else {
      diags_.error(&el, qualified(key), expected("a number in the list", el));
      return;
    }
    if (!bounds.contains(v)) {
      diags_.error(&el, qualified(key), fmt::format("element {} {}", TomlWriter::format_double(v), bounds.describe()));
      return;
    }
    out.push_back(v);
  }
  value = std::move(out);
}

void TomlReader::field(std::string_view key, StringListMap& value, std::string_view) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  auto tbl = n->as_table();
  if (!tbl) {
    error(key, expected("a table of string lists (alias = [\"pattern\", ...])", *n));
    return;
  }
  StringListMap out;
  for (auto&& [k, v] : *tbl) {
    std::vector<std::string> items;
    if (auto s = v.as_string()) {
      items.push_back(s->get());
    } else if (auto arr = v.as_array()) {
      for (const auto& el : *arr) {
        auto s2 = el.as_string();
        if (!s2) {
          diags_.error(&el, qualified(key), expected("a list of strings", el));
          return;
        }
        items.push_back(s2->get());
      }
    } else {
      diags_.error(&v, qualified(key), fmt::format("alias '{}': ", k.str()) + expected("a list of strings", v));
      return;
    }
    out[std::string(k.str())] = std::move(items);
  }
  value = std::move(out);
}

void TomlReader::field(std::string_view key, IntMap& value, std::string_view, Bounds bounds) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  auto tbl = n->as_table();
  if (!tbl) {
    error(key, expected("a table of integers (name = 4, ...)", *n));
    return;
  }
  IntMap out = value;  // entries not given keep their defaults
  for (auto&& [k, v] : *tbl) {
    const std::string where = qualified(key) + "." + std::string(k.str());
    auto i = v.as_integer();
    if (!i) {
      diags_.error(&v, where, expected("an integer", v));
      return;
    }
    if (!bounds.contains(static_cast<double>(i->get()))) {
      diags_.error(&v, where, fmt::format("got {}; {}", i->get(), bounds.describe()));
      return;
    }
    out[std::string(k.str())] = i->get();
  }
  value = std::move(out);
}

void TomlReader::tables(std::string_view key, TableList& list, std::string_view) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  auto arr = n->as_array();
  if (!arr) {
    error(key, expected("an array of tables ([{...}, ...])", *n));
    return;
  }
  list.resize(arr->size());
  for (size_t i = 0; i < arr->size(); ++i) {
    const toml::node& el = (*arr)[i];
    auto tbl = el.as_table();
    std::string sub = fmt::format("{}.{}[{}]", section_, key, i);
    if (!tbl) {
      diags_.error(&el, sub, expected("a table", el));
      continue;
    }
    TomlReader child(tbl, sub, diags_, &el);
    list.visit(i, child);
    child.finish();
  }
}

void TomlReader::unimplemented(std::string_view key, std::string_view note) {
  known_.emplace_back(key);
  ignored_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  diags_.warning(n, qualified(key),
                 fmt::format("accepted for compatibility with KempnerForge, but forge does not implement it{}{}; "
                             "the value is ignored",
                             note.empty() ? "" : ": ", note));
}

void TomlReader::unsupported(std::string_view key, std::string_view note, std::string_view neutral) {
  known_.emplace_back(key);
  const toml::node* n = node(key);
  if (!n) return;
  std::ostringstream os;  // the value as TOML text
  if (auto str = n->as_string())
    os << TomlWriter::format_string(str->get());
  else if (!n->is_table())
    n->visit([&](auto&& v) { os << v; });
  const std::string shown = n->is_table() ? "a table" : os.str();
  const bool empty_array = neutral == "[]" && n->is_array() && n->as_array()->empty();
  if (shown == neutral || empty_array) return;
  error(key, fmt::format("got {}: forge does not implement {}. Training without it would differ from what the key "
                         "asks for, so the key is refused: remove it (or set {} = {})",
                         shown, note, key, neutral));
}

void TomlReader::require(bool ok, std::string_view key, const std::string& message) {
  if (!ok) error(key, message);
}

void TomlReader::warn(std::string_view key, const std::string& message) {
  diags_.warning(where(key), qualified(key), message);
}

void TomlReader::finish(const std::vector<std::pair<std::string, std::string>>& foreign) {
  if (!table_) return;
  for (auto&& [k, v] : *table_) {
    std::string key(k.str());
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string msg = "unknown key";
    bool hinted = false;
    for (const auto& [fk, why] : foreign) {
      if (fk == key) {
        msg += "; " + why;
        hinted = true;
        break;
      }
    }
    if (!hinted) {
      std::vector<std::string> listed;
      for (const auto& k2 : known_)
        if (std::find(ignored_.begin(), ignored_.end(), k2) == ignored_.end() &&
            std::find(listed.begin(), listed.end(), k2) == listed.end())
          listed.push_back(k2);
      std::string hint = util::did_you_mean(key, listed);
      msg += hint.empty() ? std::string(".") : fmt::format("; did you mean '{}'?", hint);
      msg += fmt::format(" Keys of [{}]: {}", section_, util::join(listed, ", "));
    }
    diags_.error(&v, qualified(key), msg);
  }
}

// ------------------------------------------------------------ TomlWriter

std::string TomlWriter::format_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += fmt::format("\\u{:04X}", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string TomlWriter::format_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string TomlWriter::format_key(std::string_view k) {
  bool bare = !k.empty();
  for (char c : k)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) bare = false;
  return bare ? std::string(k) : format_string(k);
}

void TomlWriter::put(std::string_view key, const std::string& value) {
  items_.push_back(format_key(key) + " = " + value);
}

void TomlWriter::unset(std::string_view key, std::string_view help) {
  if (!inline_) items_.push_back(fmt::format("# {} is unset", key));
}

void TomlWriter::field(std::string_view key, int64_t& value, std::string_view, Bounds) { put(key, fmt::format("{}", value)); }

void TomlWriter::field(std::string_view key, std::optional<int64_t>& value, std::string_view help, Bounds) {
  if (value) {
    put(key, fmt::format("{}", *value));
  } else {
    unset(key, help);
  }
}

void TomlWriter::field(std::string_view key, double& value, std::string_view, Bounds) { put(key, format_double(value)); }

void TomlWriter::field(std::string_view key, bool& value, std::string_view) { put(key, value ? "true" : "false"); }

void TomlWriter::field(std::string_view key, std::string& value, std::string_view, const Choices&) {
  put(key, format_string(value));
}

void TomlWriter::field(std::string_view key, std::optional<std::string>& value, std::string_view help) {
  if (value) {
    put(key, format_string(*value));
  } else {
    unset(key, help);
  }
}

static std::string string_list(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ", ";
    out += TomlWriter::format_string(v[i]);
  }
  return out + "]";
}

void TomlWriter::field(std::string_view key, std::vector<std::string>& value, std::string_view) {
  put(key, string_list(value));
}

void TomlWriter::field(std::string_view key, std::vector<double>& value, std::string_view, size_t, Bounds) {
  std::string out = "[";
  for (size_t i = 0; i < value.size(); ++i) {
    if (i) out += ", ";
    out += format_double(value[i]);
  }
  put(key, out + "]");
}

void TomlWriter::field(std::string_view key, StringListMap& value, std::string_view) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : value) {
    out += first ? " " : ", ";
    first = false;
    out += format_key(k) + " = " + string_list(v);
  }
  put(key, out + (value.empty() ? "}" : " }"));
}

void TomlWriter::field(std::string_view key, IntMap& value, std::string_view, Bounds) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : value) {
    out += first ? " " : ", ";
    first = false;
    out += fmt::format("{} = {}", format_key(k), v);
  }
  put(key, out + (value.empty() ? "}" : " }"));
}

void TomlWriter::tables(std::string_view key, TableList& list, std::string_view) {
  std::string out = "[";
  for (size_t i = 0; i < list.size(); ++i) {
    TomlWriter child(true);
    list.visit(i, child);
    if (i) out += ", ";
    out += child.str();
  }
  put(key, out + "]");
}

std::string TomlWriter::str() const {
  if (inline_) {
    std::string out = "{";
    for (size_t i = 0; i < items_.size(); ++i) out += (i ? ", " : " ") + items_[i];
    return out + (items_.empty() ? "}" : " }");
  }
  std::string out;
  for (const auto& l : items_) out += l + "\n";
  return out;
}

// ------------------------------------------------------------ DocWriter

void DocWriter::row(std::string_view key, std::string type, std::string def, std::string rule, std::string_view help) {
  rows_.push_back(Row{prefix_ + std::string(key), std::move(type), std::move(def), std::move(rule), std::string(help), true});
}

void DocWriter::field(std::string_view key, int64_t& value, std::string_view help, Bounds bounds) {
  row(key, "integer", fmt::format("{}", value), bounds.empty() ? "" : bounds.describe(), help);
}
void DocWriter::field(std::string_view key, std::optional<int64_t>& value, std::string_view help, Bounds bounds) {
  row(key, "integer", value ? fmt::format("{}", *value) : "unset", bounds.empty() ? "" : bounds.describe(), help);
}
void DocWriter::field(std::string_view key, double& value, std::string_view help, Bounds bounds) {
  row(key, "float", TomlWriter::format_double(value), bounds.empty() ? "" : bounds.describe(), help);
}
void DocWriter::field(std::string_view key, bool& value, std::string_view help) {
  row(key, "bool", value ? "true" : "false", "", help);
}
void DocWriter::field(std::string_view key, std::string& value, std::string_view help, const Choices& choices) {
  row(key, "string", TomlWriter::format_string(value), choices.empty() ? "" : "one of " + util::quoted_list(choices),
      help);
}
void DocWriter::field(std::string_view key, std::optional<std::string>& value, std::string_view help) {
  row(key, "string", value ? TomlWriter::format_string(*value) : "unset", "", help);
}
void DocWriter::field(std::string_view key, std::vector<std::string>& value, std::string_view help) {
  row(key, "list of strings", string_list(value), "", help);
}
void DocWriter::field(std::string_view key, std::vector<double>& value, std::string_view help, size_t length,
                      Bounds bounds) {
  TomlWriter w(true);
  std::vector<double> copy = value;
  w.field(key, copy, help, length, bounds);
  std::string s = w.str();  // "{ key = [..] }"
  auto eq = s.find("= ");
  std::string def = eq == std::string::npos ? s : s.substr(eq + 2, s.size() - eq - 4);
  std::string rule = length ? fmt::format("{} numbers", length) : "";
  if (!bounds.empty()) rule += (rule.empty() ? "each " : ", each ") + bounds.describe();
  row(key, "list of floats", def, rule, help);
}
void DocWriter::field(std::string_view key, StringListMap& value, std::string_view help) {
  row(key, "table of string lists", value.empty() ? "{}" : "see text", "", help);
}
void DocWriter::field(std::string_view key, IntMap& value, std::string_view help, Bounds bounds) {
  TomlWriter w(true);
  IntMap copy = value;
  w.field(key, copy, help, bounds);
  std::string s = w.str();  // "{ key = { a = 1 } }"
  auto eq = s.find("= ");
  std::string def = eq == std::string::npos ? s : s.substr(eq + 2, s.size() - eq - 4);
  row(key, "table of integers", def, bounds.empty() ? "" : "each " + bounds.describe(), help);
}
void DocWriter::tables(std::string_view key, TableList& list, std::string_view help) {
  std::string def;
  {
    TomlWriter w(false);
    w.tables(key, list, help);
    def = w.str();
    auto eq = def.find("= ");
    if (eq != std::string::npos) def = def.substr(eq + 2);
    while (!def.empty() && def.back() == '\n') def.pop_back();
  }
  row(key, "array of tables", def, "", help);
  // Document the element's fields with a probe element.
  size_t n = list.size();
  list.resize(n + 1);
  DocWriter child(prefix_ + std::string(key) + "[].");
  list.visit(n, child);
  list.resize(n);
  for (auto& r : child.rows_) rows_.push_back(r);
}
void DocWriter::unimplemented(std::string_view key, std::string_view note) {
  rows_.push_back(Row{prefix_ + std::string(key), "", "", "", std::string(note), false});
}

void DocWriter::unsupported(std::string_view key, std::string_view note, std::string_view neutral) {
  rows_.push_back(Row{prefix_ + std::string(key), "", "", "", std::string(note), false, std::string(neutral)});
}

static std::string md_escape(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n') {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::string DocWriter::markdown() const {
  std::string out = "| key | type | default | accepted | meaning |\n|---|---|---|---|---|\n";
  std::vector<const Row*> ignored, refused;
  for (const auto& r : rows_) {
    if (!r.implemented) {
      (r.neutral.empty() ? ignored : refused).push_back(&r);
      continue;
    }
    out += fmt::format("| `{}` | {} | `{}` | {} | {} |\n", r.key, r.type, md_escape(r.default_value),
                       md_escape(r.rule), md_escape(r.help));
  }
  if (!ignored.empty()) {
    // Keys that share a reason are listed together.
    std::vector<std::pair<std::string, std::vector<std::string>>> by_note;
    for (const Row* r : ignored) {
      auto it = std::find_if(by_note.begin(), by_note.end(), [&](const auto& p) { return p.first == r->help; });
      if (it == by_note.end()) {
        by_note.push_back({r->help, {}});
        it = by_note.end() - 1;
      }
      it->second.push_back("`" + r->key + "`");
    }
    out += "\nAccepted for compatibility with KempnerForge and ignored, with one warning each:";
    for (const auto& [note, keys] : by_note)
      out += "\n- " + util::join(keys, ", ") + (note.empty() ? "" : " (" + note + ")");
    out += "\n";
  }
  if (!refused.empty()) {
    out += "\nKempnerForge keys that change what is trained, which forge does not implement: accepted only at the "
           "value shown (which changes nothing), an error otherwise:";
    for (const Row* r : refused)
      out += fmt::format("\n- `{} = {}` ({})", r->key, r->neutral, r->help);
    out += "\n";
  }
  return out;
}

}  // namespace forge::config
