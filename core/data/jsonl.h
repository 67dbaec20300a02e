// A JSONL image-caption manifest: one {"image": path, "text": caption,
// "prompt": optional} object per line, image paths relative to the manifest.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/data/data.h"

namespace forge {

class FORGE_API JsonlDataset final : public Dataset {
 public:
  // Reads and checks every line (JSON, keys, image file present, text not
  // empty). With skip_bad, bad rows are counted and left out; otherwise the
  // first one is a UserError "<manifest>:<line>: <what is wrong>".
  JsonlDataset(const std::string& manifest, bool skip_bad, bool blank_images = false);
  size_t size() const override { return rows_.size(); }
  // Decodes the image; an undecodable one is a FormatError "<manifest>:<line>: ...".
  Example get(size_t index) const override;
  std::string describe() const override;

  struct Row {
    int64_t line = 0;
    std::string image;  // resolved path
    std::string text;
    std::string prompt;
  };
  const std::vector<Row>& rows() const { return rows_; }
  int64_t lines() const { return lines_; }
  // Bad rows found while reading the manifest, by reason.
  const std::map<std::string, int64_t>& bad_rows() const { return bad_; }
  int64_t bad_count() const;

 private:
  std::string path_;
  bool blank_;
  std::vector<Row> rows_;
  int64_t lines_ = 0;
  std::map<std::string, int64_t> bad_;
};

}  // namespace forge
