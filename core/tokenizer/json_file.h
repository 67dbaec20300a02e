// Reading tokenizer.json: every complaint is a FormatError naming the file and the JSON key path.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace forge::tok {

using json = nlohmann::json;

class JsonFile {
 public:
  explicit JsonFile(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }

  json parse() const;
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;
  const json& get(const json& obj, const char* name, const std::string& key) const;
  bool flag(const json& obj, const char* name, const std::string& key, bool fallback) const;
  std::string string(const json& obj, const char* name, const std::string& key) const;
  // A key that must be null or absent (features forge does not implement).
  void want_null(const json& obj, const char* name, const std::string& key, const std::string& why) const;

 private:
  std::string path_;
};

// obj["type"], obj being an object.
std::string type_of(const JsonFile& f, const json& obj, const std::string& where);

}  // namespace forge::tok
