// WebVid-style video-caption corpora, laid out as KempnerForge reads them:
//   <data_root>/raw/<dataset_name>/data/<train|val>/partitions/*.csv
//       (columns videoid and name, the caption; other columns ignored)
//   <data_root>/raw/videos/train/<id[:2]>/<id[:4]>/<id[:6]>/<id>.mp4
//   <data_root>/raw/videos/validation/<id>.mp4
#pragma once

#include <string>
#include <vector>

#include "core/data/data.h"
#include "core/data/video.h"

namespace forge {

struct FORGE_API WebVidOptions {
  std::string data_root;
  std::string dataset_name = "webvid-10M";
  std::string split = "train";  // "train" | "validation"
  int64_t max_samples = 0;      // 0: all
  std::string prompt;
  FrameSampling sampling;
};

class FORGE_API WebVidDataset final : public Dataset {
 public:
  // Reads the partitions in name order (stopping once max_samples rows are
  // read). No partition, or one without the videoid and name columns, is a
  // UserError naming the folder or file. Videos are opened only by get().
  explicit WebVidDataset(WebVidOptions options);
  size_t size() const override { return rows_.size(); }
  // Decodes the clip; a missing or undecodable video is a FormatError
  // "<partition.csv>:<line>: ...".
  Example get(size_t index) const override;
  std::string describe() const override;
  std::string video_path(const std::string& id) const;

  struct Row {
    std::string id, caption;
    int32_t file = 0;   // index into files_
    int64_t line = 0;   // the row's first line in that file
  };

 private:
  WebVidOptions opt_;
  std::vector<std::string> files_;
  std::vector<Row> rows_;
};

// One CSV file's records (RFC 4180: quoted fields may hold commas, doubled
// quotes and line breaks), each with the line it starts on.
FORGE_API std::vector<std::pair<int64_t, std::vector<std::string>>> read_csv(const std::string& path);

}  // namespace forge
