#include "core/tokenizer/json_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "forge/error.h"

namespace forge::tok {

json JsonFile::parse() const {
  std::ifstream in(path_, std::ios::binary);
  if (!in) throw FormatError(fmt::format("{}: cannot open: {}", path_, std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers beyond a double
    throw FormatError(fmt::format("{}: not valid JSON ({})", path_, e.what()));
  }
}

void JsonFile::fail(const std::string& key, const std::string& what) const {
  throw FormatError(fmt::format("{}: {} {}", path_, key, what));
}

const json& JsonFile::get(const json& obj, const char* name, const std::string& key) const {
  auto it = obj.find(name);
  if (it == obj.end()) fail(key, "is missing");
  return *it;
}

bool JsonFile::flag(const json& obj, const char* name, const std::string& key, bool fallback) const {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(key, fmt::format("must be true or false, not {}", it->dump()));
  return it->get<bool>();
}

std::string JsonFile::string(const json& obj, const char* name, const std::string& key) const {
  const json& v = get(obj, name, key);
  if (!v.is_string()) fail(key, fmt::format("must be a string, not {}", v.dump()));
  return v.get<std::string>();
}

void JsonFile::want_null(const json& obj, const char* name, const std::string& key, const std::string& why) const {
  auto it = obj.find(name);
  if (it != obj.end() && !it->is_null()) fail(key, fmt::format("is {}; {}", it->dump(), why));
}

std::string type_of(const JsonFile& f, const json& obj, const std::string& where) {
  if (!obj.is_object()) f.fail(where, fmt::format("must be an object, not {}", obj.dump()));
  return f.string(obj, "type", where + ".type");
}

}  // namespace forge::tok
