#include "core/data/datasets.h"

#include <fmt/format.h>

#include <filesystem>

#include "core/data/jsonl.h"
#include "core/data/shapes.h"
#include "core/data/webvid.h"
#include "forge/error.h"

namespace forge {

namespace {

// [video]: training reads video.split; held-out data is the validation split
// when training reads train and data_root has one.
std::shared_ptr<Dataset> make_video_dataset(const JobConfig& job, bool train) {
  const VideoConfig& v = *job.video;
  const std::string split = train ? v.split : "validation";
  if (!train && v.split == "validation") return nullptr;  // nothing held out from the split it trains on
  FrameSampling sampling{v.fps, v.min_frames, v.max_frames};
  namespace fs = std::filesystem;
  std::error_code ec;
  if (v.dataset_type == "jsonl") {
    const std::string manifest = (fs::path(v.data_root) / (split + ".jsonl")).string();
    if (!fs::is_regular_file(manifest, ec)) {
      if (!train) return nullptr;
      throw UserError(fmt::format("video.data_root: no {} (dataset_type = \"jsonl\" reads <data_root>/<split>.jsonl)",
                                  manifest));
    }
    return std::make_shared<JsonlDataset>(
        manifest, JsonlOptions{job.data.bad_rows == "skip", job.data.blank_images, sampling, v.max_samples, v.prompt});
  }
  if (!train && !fs::is_directory(fs::path(v.data_root) / "raw" / v.dataset_name / "data" / "val", ec)) return nullptr;
  return std::make_shared<WebVidDataset>(WebVidOptions{v.data_root, v.dataset_name, split, v.max_samples, v.prompt,
                                                       sampling});
}

}  // namespace

std::shared_ptr<Dataset> make_dataset(const JobConfig& job, const std::string& split) {
  const DataConfig& d = job.data;
  const bool train = split == "train";
  if (job.video) return make_video_dataset(job, train);
  if (d.type == "shapes") {
    return std::make_shared<ShapesDataset>(
        static_cast<size_t>(train ? d.shapes_train_samples : d.shapes_heldout_samples),
        static_cast<uint64_t>(d.shapes_seed), train ? ShapesDataset::Split::Train : ShapesDataset::Split::Heldout,
        static_cast<int>(d.hf_image_size), d.blank_images);
  }
  if (d.type == "jsonl") {
    const std::string path = train ? d.path : job.eval.dataset_path;
    if (path.empty()) return nullptr;
    return std::make_shared<JsonlDataset>(path, d.bad_rows == "skip", d.blank_images);
  }
  throw UserError(fmt::format("data.type \"{}\" is not known", d.type));
}

}  // namespace forge
