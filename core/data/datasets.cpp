#include "core/data/datasets.h"

#include <fmt/format.h>

#include "core/data/jsonl.h"
#include "core/data/shapes.h"
#include "forge/error.h"

namespace forge {

std::shared_ptr<Dataset> make_dataset(const JobConfig& job, const std::string& split) {
  const DataConfig& d = job.data;
  const bool train = split == "train";
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
