// Captions generated at evaluation (D9): the first N held-out samples are
// captioned greedily (KV cache) and scored against their own captions (the
// example's text and its other references) with BLEU-4, CIDEr-D and exact
// match (caption_metrics.h), on any data.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/data/loader.h"
#include "core/model/vlm.h"
#include "core/training/caption_metrics.h"
#include "core/training/precision.h"
#include "forge/export.h"

namespace forge {

struct FORGE_API CaptionSample {
  int64_t index = 0;      // in the held-out dataset
  std::string source;     // where the sample came from ("manifest.jsonl:12")
  std::string reference;  // its caption
  std::vector<std::string> more_references;  // the example's other captions, scored against too
  std::string generated;
  Image image;  // a thumbnail of what was captioned (a clip's first frame), for reports
};

struct FORGE_API CaptionEval {
  CaptionScores scores;
  std::vector<CaptionSample> samples;
  std::string skipped_why;               // non-empty: no captions were generated, and why
  double seconds = 0;
};

struct FORGE_API CaptionEvalOptions {
  int64_t samples = 16;
  int64_t max_seq_len = 0;  // the decoder's; bounds prompt + caption
  at::Device device = at::kCPU;
  Precision precision;
  int thumbnail_side = 160;  // CaptionSample::image's longer side at most
  int64_t batch_size = 16;  // samples generated together (those of equal prompt length)
  // Set when every rank captions together over sharded parameters (their
  // gathers are collectives, so all must decode the same batches in step):
  // GenerateOptions::agree, and whether a sample loaded and fits on every
  // rank (a collective; a sample any rank cannot use is left out by all).
  std::function<void(at::Tensor&)> agree;
  std::function<bool(bool)> every_rank;
};

// Captions the first `options.samples` examples of the loader's dataset that
// load and fit (a bad row is passed over), in batches of equal prompt length.
// Under sharding every rank calls it with the same data, with `agree` and
// `every_rank` set.
FORGE_API CaptionEval caption_eval(VLMImpl& model, const DataLoader& data, const CaptionEvalOptions& options);

}  // namespace forge
