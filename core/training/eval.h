// Held-out evaluation (D9): loss, token accuracy, and caption accuracy on
// the image-dependent words (teacher-forced: a word counts as right when
// every one of its tokens is the argmax prediction).
#pragma once

#include <map>
#include <string>

#include "core/data/loader.h"
#include "core/model/vlm.h"
#include "core/training/precision.h"
#include "forge/export.h"

namespace forge {

struct FORGE_API EvalResult {
  double loss = 0;            // mean over target tokens
  double token_accuracy = 0;  // over target tokens
  double word_accuracy = 0;   // over image-dependent words (0 when the data marks none)
  int64_t tokens = 0;
  int64_t words = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> by_kind;  // kind -> (right, total)
  int64_t batches = 0;
  double kind_accuracy(const std::string& kind) const;
};

// Evaluates `batches` batches from the loader's start (it is rewound first).
FORGE_API EvalResult evaluate(VLMImpl& model, DataLoader& loader, int64_t batches, const at::Device& device,
                              const Precision& precision);

}  // namespace forge
