// [model] init_from_hf: a pretrained Hugging Face causal-LM folder sets the
// decoder's shape, the tokenizer and the special ids of a job config.
#pragma once

#include <toml++/toml.h>

#include "core/config/job.h"
#include "core/config/visitors.h"

namespace forge {

// Reads model.init_from_hf's config.json into job.model. A [model] key the
// TOML sets must agree with the folder (an error naming both values);
// max_seq_len may be set lower than the folder's max_position_embeddings. An
// empty data.tokenizer_path becomes the folder's tokenizer.json, and unset
// data.{bos,eos,pad}_token_id come from the folder. Sliding-window attention
// that would bind at model.max_seq_len is refused. Problems are reported
// through `diags` at the key they concern.
void apply_init_from_hf(const toml::table& root, JobConfig& job, config::Diagnostics& diags);

}  // namespace forge
