// The tokenizer a job's [data] section describes: data.tokenizer_path with
// the data.{bos,eos,pad}_token_id overrides (which init_from_hf fills in from
// a pretrained folder).
#pragma once

#include <memory>

#include "core/config/job.h"
#include "core/data/tokenizer.h"

namespace forge {

// A bad override (an id outside the vocabulary) is a UserError naming the key.
FORGE_API std::shared_ptr<Tokenizer> make_tokenizer(const DataConfig& data);

}  // namespace forge
