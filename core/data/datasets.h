// Which dataset a config trains and evaluates on.
#pragma once

#include <memory>
#include <string>

#include "core/config/job.h"
#include "core/data/data.h"

namespace forge {

// split: "train" or "heldout". Returns null when the config has no held-out
// data (a JSONL manifest without eval.dataset_path).
FORGE_API std::shared_ptr<Dataset> make_dataset(const JobConfig& job, const std::string& split);

}  // namespace forge
