// [model] init_from_hf (core/config/pretrained.h).
#include "core/config/pretrained.h"

#include <filesystem>

#include <fmt/format.h>

#include "core/data/job_tokenizer.h"
#include "core/io/hf_llm.h"
#include "forge/error.h"

namespace fs = std::filesystem;

namespace forge {

namespace {

const toml::node* model_key(const toml::table& root, const std::string& key) {
  const toml::node* m = root.get("model");
  if (!m || !m->is_table()) return nullptr;
  return m->as_table()->get(key);
}

}  // namespace

void apply_init_from_hf(const toml::table& root, JobConfig& job, config::Diagnostics& diags) {
  if (job.model.init_from_hf.empty()) return;
  // Absolute, so the resolved config (stored in every checkpoint) works from any directory.
  std::error_code abs_ec;
  const std::string dir = fs::absolute(job.model.init_from_hf, abs_ec).lexically_normal().string();
  const toml::node* at_key = model_key(root, "init_from_hf");
  const toml::node* anchor = at_key ? at_key : root.get("model");
  if (job.model.num_experts > 0) {
    const toml::node* n = model_key(root, "num_experts");
    diags.error(n ? n : anchor, "model.num_experts",
                fmt::format("num_experts = {} asks for mixture-of-experts layers, but init_from_hf loads a dense "
                            "decoder and forge does not upcycle dense MLPs into experts; remove num_experts or "
                            "init_from_hf",
                            job.model.num_experts));
    return;
  }
  hf::LlmConfig llm;
  try {
    llm = hf::read_llm_config(dir, job.model);
  } catch (const Error& e) {
    diags.error(anchor, "model.init_from_hf", e.what());
    return;
  }
  bool agree = true;
  for (const auto& [key, hf_key] : llm.keys) {
    const toml::node* n = model_key(root, key);
    if (!n) continue;
    const std::string mine = hf::model_value(job.model, key), theirs = hf::model_value(llm.model, key);
    if (mine == theirs) continue;
    agree = false;
    diags.error(n, "model." + key,
                fmt::format("model.{} = {} disagrees with {} in {} ({}: {} = {}); remove model.{} (init_from_hf "
                            "sets it) or set it to {}",
                            key, mine, llm.config_path, dir, hf_key, key, theirs, key, theirs));
  }
  if (!agree) return;
  const int64_t max_pos = llm.max_position_embeddings;
  if (const toml::node* n = model_key(root, "max_seq_len")) {
    if (job.model.max_seq_len > max_pos)
      diags.error(n, "model.max_seq_len",
                  fmt::format("model.max_seq_len = {} exceeds max_position_embeddings = {} in {}; set max_seq_len <= "
                              "{} (or leave it out)",
                              job.model.max_seq_len, max_pos, llm.config_path, max_pos));
    llm.model.max_seq_len = job.model.max_seq_len;
  } else {
    llm.model.max_seq_len = max_pos;
  }
  if (llm.sliding_window && *llm.sliding_window < llm.model.max_seq_len) {
    diags.error(anchor, "model.init_from_hf",
                fmt::format("{}: sliding-window attention is on ({}; window {} < model.max_seq_len {}) and forge's "
                            "attention is full causal; set model.max_seq_len <= {} so the window never binds",
                            llm.config_path, llm.sliding_window_key, *llm.sliding_window, llm.model.max_seq_len,
                            *llm.sliding_window));
    return;
  }
  job.model = llm.model;
  job.model.init_from_hf = dir;

  DataConfig& data = job.data;
  const bool own_tokenizer = data.tokenizer_path.empty();
  if (own_tokenizer) {
    const std::string tok = (fs::path(dir) / "tokenizer.json").string();
    std::error_code ec;
    if (!fs::exists(tok, ec)) {
      diags.error(anchor, "model.init_from_hf",
                  fmt::format("{}: missing; the folder has no tokenizer.json, so set data.tokenizer_path to the "
                              "tokenizer.json the model was trained with",
                              tok));
      return;
    }
    data.tokenizer_path = tok;
  }
  // The folder's ids belong to the folder's tokenizer, not to one the config names instead.
  if (own_tokenizer) {
    if (!data.bos_token_id && llm.bos_id) data.bos_token_id = llm.bos_id;
    if (!data.eos_token_id && llm.eos_id) data.eos_token_id = llm.eos_id;
    if (!data.pad_token_id && llm.pad_id) data.pad_token_id = llm.pad_id;
  }
  // The tokenizer must fit the pretrained embedding (checked now, before anything runs).
  const toml::node* tok_at = own_tokenizer ? anchor : nullptr;
  if (!own_tokenizer) {
    const toml::node* d = root.get("data");
    if (d && d->is_table()) tok_at = d->as_table()->get("tokenizer_path");
  }
  try {
    auto tok = make_tokenizer(data);
    if (tok->vocab_size() > job.model.vocab_size)
      diags.error(tok_at, own_tokenizer ? "model.init_from_hf" : "data.tokenizer_path",
                  fmt::format("{} has {} ids but the embedding of {} has vocab_size = {} rows; use the tokenizer the "
                              "model was trained with",
                              data.tokenizer_path, tok->vocab_size(), llm.config_path, job.model.vocab_size));
  } catch (const Error& e) {
    diags.error(tok_at, own_tokenizer ? "model.init_from_hf" : "data.tokenizer_path", e.what());
  }
}

}  // namespace forge
