#include "core/data/webvid.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "forge/error.h"

namespace fs = std::filesystem;

namespace forge {

std::vector<std::pair<int64_t, std::vector<std::string>>> read_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot open", path));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string s = buf.str();
  std::vector<std::pair<int64_t, std::vector<std::string>>> out;
  std::vector<std::string> record;
  std::string field;
  int64_t line = 1, record_line = 1;
  bool quoted = false, any = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quoted) {
      if (c == '"' && i + 1 < s.size() && s[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"') {
      quoted = any = true;
    } else if (c == ',') {
      record.push_back(std::move(field));
      field.clear();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      if (any || !field.empty()) {
        record.push_back(std::move(field));
        out.emplace_back(record_line, std::move(record));
      }
      record.clear();
      field.clear();
      any = false;
      record_line = ++line;
    } else {
      field += c;
      any = true;
    }
  }
  if (quoted) throw UserError(fmt::format("{}:{}: a quoted field is not closed", path, record_line));
  if (any || !field.empty()) {
    record.push_back(std::move(field));
    out.emplace_back(record_line, std::move(record));
  }
  return out;
}

WebVidDataset::WebVidDataset(WebVidOptions options) : opt_(std::move(options)) {
  const std::string csv_split = opt_.split == "validation" ? "val" : "train";
  const fs::path dir = fs::path(opt_.data_root) / "raw" / opt_.dataset_name / "data" / csv_split / "partitions";
  std::error_code ec;
  if (fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".csv") files_.push_back(e.path().string());
  std::sort(files_.begin(), files_.end());
  if (files_.empty())
    throw UserError(fmt::format("video.data_root: no partition CSVs in {} (dataset_type = \"webvid\" reads "
                                "<data_root>/raw/<dataset_name>/data/<train|val>/partitions/*.csv)",
                                dir.string()));
  for (size_t f = 0; f < files_.size(); ++f) {
    auto records = read_csv(files_[f]);
    if (records.empty()) continue;
    const auto& header = records.front().second;
    auto col = [&](const char* name) {
      auto it = std::find(header.begin(), header.end(), name);
      if (it == header.end())
        throw UserError(fmt::format("{}:1: the header has no '{}' column (it has: {})", files_[f], name,
                                    fmt::join(header, ", ")));
      return static_cast<size_t>(it - header.begin());
    };
    const size_t id_col = col("videoid"), name_col = col("name");
    for (size_t r = 1; r < records.size(); ++r) {
      const auto& [line, fields] = records[r];
      if (fields.size() <= std::max(id_col, name_col))
        throw UserError(fmt::format("{}:{}: {} fields, the header has {}", files_[f], line, fields.size(),
                                    header.size()));
      rows_.push_back(Row{fields[id_col], fields[name_col], static_cast<int32_t>(f), line});
      if (opt_.max_samples > 0 && static_cast<int64_t>(rows_.size()) >= opt_.max_samples) return;
    }
  }
  if (rows_.empty()) throw UserError(fmt::format("video.data_root: the partitions in {} hold no clips", dir.string()));
}

std::string WebVidDataset::video_path(const std::string& id) const {
  const fs::path videos = fs::path(opt_.data_root) / "raw" / "videos";
  if (opt_.split == "validation") return (videos / "validation" / (id + ".mp4")).string();
  return (videos / "train" / id.substr(0, 2) / id.substr(0, 4) / id.substr(0, 6) / (id + ".mp4")).string();
}

Example WebVidDataset::get(size_t index) const {
  const Row& r = rows_.at(index);
  Example ex;
  ex.text = r.caption;
  ex.prompt = opt_.prompt;
  ex.source = fmt::format("{}:{}", files_[static_cast<size_t>(r.file)], r.line);
  const std::string path = video_path(r.id);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw FormatError(fmt::format("{}: missing video {}", ex.source, path));
  try {
    ex.frames = decode_clip(path, opt_.sampling).frames;
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{}: undecodable video: {}", ex.source, e.what()));
  }
  return ex;
}

std::string WebVidDataset::describe() const {
  return fmt::format("WebVid {} [{}] under {} ({} clips, {} partitions)", opt_.dataset_name, opt_.split,
                     opt_.data_root, rows_.size(), files_.size());
}

}  // namespace forge
