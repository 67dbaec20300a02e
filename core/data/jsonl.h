// A JSONL caption manifest: one {"image": path, "text": caption, "prompt":
// optional} object per line (or "video" instead of "image" for clips), paths
// relative to the manifest.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/data/data.h"
#include "core/data/video.h"

namespace forge {

struct FORGE_API JsonlOptions {
  bool skip_bad = false;      // count and leave out bad rows instead of stopping at the first
  bool blank_images = false;  // a control run: every image (or frame) black
  std::optional<FrameSampling> video;  // set: rows name "video" clips, decoded with this sampling
  int64_t max_rows = 0;       // read at most this many usable rows (0: all)
  std::string prompt;         // a prompt for rows without their own
};

class FORGE_API JsonlDataset final : public Dataset {
 public:
  // Reads and checks every line (JSON, keys, media file present, text not
  // empty). With skip_bad, bad rows are counted and left out; otherwise the
  // first one is a UserError "<manifest>:<line>: <what is wrong>".
  JsonlDataset(const std::string& manifest, bool skip_bad, bool blank_images = false);
  JsonlDataset(const std::string& manifest, const JsonlOptions& options);
  size_t size() const override { return rows_.size(); }
  // Decodes the image (or the clip's frames); an undecodable one is a
  // FormatError "<manifest>:<line>: ...".
  Example get(size_t index) const override;
  std::string describe() const override;

  struct Row {
    int64_t line = 0;
    std::string image;  // resolved path of the image (or the video)
    std::string text;
    std::string prompt;
    std::vector<std::string> references;  // other captions of the image, for scoring generated ones
  };
  const std::vector<Row>& rows() const { return rows_; }
  int64_t lines() const { return lines_; }
  // Bad rows found while reading the manifest, by reason.
  const std::map<std::string, int64_t>& bad_rows() const { return bad_; }
  int64_t bad_count() const;

 private:
  std::string path_;
  JsonlOptions opt_;
  std::vector<Row> rows_;
  int64_t lines_ = 0;
  std::map<std::string, int64_t> bad_;
};

}  // namespace forge
