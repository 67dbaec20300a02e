#include "core/data/jsonl.h"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "forge/error.h"
#include "forge/logging.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge {

namespace {
bool blank_text(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }
}  // namespace

JsonlDataset::JsonlDataset(const std::string& manifest, bool skip_bad, bool blank)
    : JsonlDataset(manifest, JsonlOptions{skip_bad, blank, std::nullopt, 0, ""}) {}

JsonlDataset::JsonlDataset(const std::string& manifest, const JsonlOptions& options) : path_(manifest), opt_(options) {
  const bool skip_bad = opt_.skip_bad;
  const std::string media = opt_.video ? "video" : "image";
  std::ifstream in(manifest);
  if (!in) throw UserError(fmt::format("{}: cannot open the manifest (data.path)", manifest));
  const fs::path base = fs::path(manifest).parent_path();
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (opt_.max_rows > 0 && static_cast<int64_t>(rows_.size()) >= opt_.max_rows) break;
    if (blank_text(line)) continue;
    ++lines_;
    // reason is "kind: detail"; the kind is what skip mode counts.
    auto bad = [&](const std::string& kind, const std::string& detail) {
      std::string where = fmt::format("{}:{}", manifest, n);
      if (!skip_bad)
        throw UserError(fmt::format("{}: {}: {} (set data.bad_rows = \"skip\" to skip and count bad rows)", where,
                                    kind, detail));
      ++bad_[kind];
      log()->warn("{}: {}: {} (skipped)", where, kind, detail);
    };
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      bad("malformed JSON", e.what());
      continue;
    }
    if (!j.is_object()) {
      bad("malformed JSON", fmt::format("a line must be an object {{\"{}\": ..., \"text\": ...}}", media));
      continue;
    }
    if (!j.contains(media) || !j[media].is_string()) {
      bad("missing key", opt_.video ? "\"video\" (a path to a video file) is required"
                                    : "\"image\" (a path to a PNG or JPEG file) is required");
      continue;
    }
    if (!j.contains("text") || !j["text"].is_string()) {
      bad("missing key", "\"text\" (the caption) is required");
      continue;
    }
    if (j.contains("prompt") && !j["prompt"].is_null() && !j["prompt"].is_string()) {
      bad("malformed JSON", "\"prompt\" must be a string");
      continue;
    }
    std::vector<std::string> references;
    if (j.contains("references") && !j["references"].is_null()) {
      bool ok = j["references"].is_array();
      if (ok)
        for (const auto& ref : j["references"]) {
          ok = ok && ref.is_string() && !blank_text(ref.get<std::string>());
          if (ok) references.push_back(ref.get<std::string>());
        }
      if (!ok) {
        bad("malformed JSON", "\"references\" must be a list of non-empty captions (strings)");
        continue;
      }
    }
    Row r;
    r.line = n;
    fs::path img(j[media].get<std::string>());
    r.image = (img.is_absolute() ? img : base / img).lexically_normal().string();
    r.text = j["text"].get<std::string>();
    r.prompt = j.contains("prompt") && j["prompt"].is_string() ? j["prompt"].get<std::string>() : opt_.prompt;
    r.references = std::move(references);
    if (blank_text(r.text)) {
      bad("empty text", "the caption is empty");
      continue;
    }
    std::error_code ec;
    if (!fs::is_regular_file(r.image, ec)) {
      bad("missing file", fmt::format("{} {} does not exist", media, r.image));
      continue;
    }
    rows_.push_back(std::move(r));
  }
  if (rows_.empty())
    throw UserError(fmt::format("{}: no usable rows ({} lines, {} bad)", manifest, lines_, bad_count()));
  if (bad_count())
    log()->warn("{}: {} of {} rows skipped ({})", manifest, bad_count(), lines_, [&] {
      std::string s;
      for (const auto& [k, v] : bad_) s += fmt::format("{}{}: {}", s.empty() ? "" : ", ", k, v);
      return s;
    }());
}

int64_t JsonlDataset::bad_count() const {
  int64_t n = 0;
  for (const auto& [k, v] : bad_) n += v;
  return n;
}

std::string JsonlDataset::describe() const {
  return fmt::format("JSONL {}manifest {} ({} rows{})", opt_.video ? "video " : "", path_, rows_.size(),
                     bad_count() ? fmt::format(", {} bad rows skipped", bad_count()) : std::string());
}

Example JsonlDataset::get(size_t index) const {
  const Row& r = rows_.at(index);
  Example ex;
  ex.text = r.text;
  ex.prompt = r.prompt;
  ex.references = r.references;
  ex.source = fmt::format("{}:{}", path_, r.line);
  if (opt_.video) {
    try {
      ex.frames = decode_clip(r.image, *opt_.video).frames;
    } catch (const FormatError& e) {
      throw FormatError(fmt::format("{}: undecodable video: {}", ex.source, e.what()));
    }
    if (opt_.blank_images)
      for (auto& f : ex.frames) std::fill(f.rgb.begin(), f.rgb.end(), static_cast<uint8_t>(0));
    return ex;
  }
  try {
    ex.image = read_image(r.image);
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{}: undecodable image: {}", ex.source, e.what()));
  }
  if (opt_.blank_images) std::fill(ex.image.rgb.begin(), ex.image.rgb.end(), static_cast<uint8_t>(0));
  return ex;
}

}  // namespace forge
