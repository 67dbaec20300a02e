// forge export --format hf (core/io/hf_export.h): the two layouts and the
// atomic output folder.
#include "core/io/hf_export.h"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <cstring>
#include <cerrno>
#include <fstream>
#include <map>
#include <set>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/state_dict.h"
#include "core/config/loader.h"
#include "core/data/job_tokenizer.h"
#include "core/io/hf_llm.h"
#include "core/model/vlm.h"
#include "core/util/files.h"
#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/safetensors.h"
#include "forge/version.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge::hf {

namespace {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

// ------------------------------------------------------------ the output folder

// Everything is written into .<name>.tmp-<pid> next to `out`, synced, then
// renamed into place; a previous `out` (with force) is moved aside first and
// put back if the rename fails. The destructor removes an uncommitted copy.
class Staging {
 public:
  Staging(const std::string& out, bool force) {
    fs::path p = fs::absolute(fs::path(out)).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    out_ = p;
    std::error_code ec;
    if (fs::exists(out_, ec)) {
      if (!fs::is_directory(out_, ec))
        throw UserError(fmt::format("{}: exists and is not a folder; choose another output folder", out_.string()));
      if (!fs::is_empty(out_, ec) && !force)
        throw UserError(
            fmt::format("{}: exists and is not empty; pass --force to replace it (the old folder stays "
                        "until the new one is complete)",
                        out_.string()));
    }
    fs::create_directories(out_.parent_path(), ec);
    if (ec) throw UserError(fmt::format("{}: cannot create it: {}", out_.parent_path().string(), ec.message()));
    tmp_ = out_.parent_path() / fmt::format(".{}.tmp-{}", out_.filename().string(), ::getpid());
    util::remove_tree(tmp_.string());
    fs::create_directories(tmp_, ec);
    if (ec) throw RuntimeError(fmt::format("{}: cannot create it: {}", tmp_.string(), ec.message()));
  }
  ~Staging() {
    if (!done_) util::remove_tree(tmp_.string());
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  const fs::path& out() const { return out_; }
  // The staging path of `rel`, its folder created; recorded as an output file.
  std::string file(const std::string& rel) {
    const fs::path p = tmp_ / rel;
    fs::create_directories(p.parent_path());
    files_.push_back(rel);
    return p.string();
  }
  void text(const std::string& rel, const std::string& content) {
    const std::string p = file(rel);
    std::ofstream o(p, std::ios::trunc);
    o << content;
    o.flush();
    if (!o) throw RuntimeError(fmt::format("{}: write failed: {}", p, std::strerror(errno)));
  }
  void json_file(const std::string& rel, const json& j) { text(rel, j.dump(2) + "\n"); }
  void tensors(const std::string& rel, const Tensors& t) { safetensors::save(file(rel), t, {{"format", "pt"}}); }
  const std::vector<std::string>& files() const { return files_; }

  void commit() {
    for (const auto& e : fs::recursive_directory_iterator(tmp_)) util::sync_path(e.path().string());
    for (const auto& e : fs::recursive_directory_iterator(tmp_))
      if (e.is_directory()) util::sync_path(e.path().string());
    util::sync_path(tmp_.string());
    failpoint("export.before_rename");
    std::error_code ec;
    fs::path old;
    if (fs::exists(out_, ec)) {
      old = out_.parent_path() / fmt::format(".{}.old-{}", out_.filename().string(), ::getpid());
      fs::rename(out_, old);
    }
    try {
      fs::rename(tmp_, out_);
    } catch (...) {
      if (!old.empty()) fs::rename(old, out_, ec);
      throw;
    }
    done_ = true;
    util::sync_path(out_.parent_path().string());
    if (!old.empty()) util::remove_tree(old.string());
  }

 private:
  fs::path out_, tmp_;
  std::vector<std::string> files_;
  bool done_ = false;
};

// ------------------------------------------------------------ what the model holds

std::string tower_family(const JobConfig& job) {
  const EncoderConfig& e = *job.vision_encoder;
  if (e.type == "clip") return "clip";
  if (e.type != "siglip" && e.type != "siglip2") return "";
  const std::string dir = e.resolved_path();
  if (dir.empty()) return "siglip";
  std::ifstream in(fs::path(dir) / "config.json");
  json root = json::parse(in, nullptr, false);
  const std::string type = root.is_object() ? root.value("model_type", "") : "";
  return util::starts_with(type, "siglip2") ? "siglip2" : "siglip";
}

int64_t feature_layer(const JobConfig& job) {
  json f = encoder_fields(*job.vision_encoder);
  return f.value("feature_layer", int64_t{0});
}

// A tensor's identity, to tell which state-dict entries an export already took.
const void* key_of(const at::Tensor& t) { return t.data_ptr(); }

// The tokenizer.json beside data.tokenizer_path ("" for forge's byte-level tokenizer).
std::string tokenizer_json(const DataConfig& d) {
  if (d.tokenizer_path.empty()) return "";
  std::error_code ec;
  if (fs::is_directory(d.tokenizer_path, ec)) return (fs::path(d.tokenizer_path) / "tokenizer.json").string();
  return d.tokenizer_path;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UserError(fmt::format("{}: cannot open", path));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw UserError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
}

// The decoder's text path under HF causal-LM names.
Tensors hf_text_weights(VLMImpl& model, std::set<const void*>* taken) {
  Tensors out;
  for (const auto& [name, t] : model.transformer->hooks().dense_text_weights(*model.transformer)) {
    const std::string hf = hf_name_of(name);
    if (hf.empty())
      throw RuntimeError(fmt::format("export: the dense text weight '{}' has no Hugging Face name", name));
    out.emplace_back(hf, t.detach().to(at::kCPU, at::kFloat).contiguous());
    if (taken) taken->insert(key_of(t));
  }
  return out;
}

json generation_config(const Tokenizer& tok) {
  json g{{"_from_model_config", true}};
  if (tok.bos_id() >= 0) g["bos_token_id"] = tok.bos_id();
  if (tok.eos_id() >= 0) g["eos_token_id"] = tok.eos_id();
  if (tok.pad_id() >= 0) g["pad_token_id"] = tok.pad_id();
  return g;
}

std::string tower_class(const std::string& family) {
  if (family == "clip") return "CLIPVisionModel";
  return family == "siglip2" ? "Siglip2VisionModel" : "SiglipVisionModel";
}

// ------------------------------------------------------------ LLaVA

// The image token: "<image>" when the tokenizer has it; else the first id the
// embedding has and the tokenizer does not use; else one more id (grow = true).
struct ImageToken {
  int64_t id = 0;
  bool grow = false;
  bool added = false;  // to add to tokenizer.json
};

ImageToken pick_image_token(const json* tok, int64_t tokenizer_vocab, int64_t model_vocab) {
  ImageToken t;
  if (tok) {
    int64_t existing = -1;
    for (const auto& a : (*tok)["added_tokens"])
      if (a.value("content", "") == "<image>") existing = a.value("id", int64_t{-1});
    if (existing >= 0 && existing < model_vocab) {
      t.id = existing;
      return t;
    }
    if (existing >= 0)
      throw UserError(fmt::format("the tokenizer's <image> token has id {}, past the model's {} embedding rows; "
                                  "LLaVA needs the image token inside the embedding",
                                  existing, model_vocab));
  }
  if (tokenizer_vocab > model_vocab)
    throw UserError(fmt::format("the tokenizer has {} ids but the model's embedding only {} rows", tokenizer_vocab,
                                model_vocab));
  t.added = true;
  t.id = tokenizer_vocab;  // the first id the tokenizer does not use
  t.grow = tokenizer_vocab == model_vocab;
  return t;
}

int64_t vocab_of(const json& tok) {
  int64_t n = 0;
  const json& vocab = tok["model"]["vocab"];
  if (vocab.is_object()) {
    for (const auto& [k, v] : vocab.items()) n = std::max(n, v.get<int64_t>() + 1);
  } else if (vocab.is_array()) {
    n = static_cast<int64_t>(vocab.size());
  }
  for (const auto& a : tok["added_tokens"]) n = std::max(n, a.value("id", int64_t{0}) + 1);
  return n;
}

std::string llava_readme(const JobConfig& job, int64_t n_image, const ImageToken& img, bool has_tokenizer,
                         const std::string& strategy, int64_t layer) {
  std::string r = fmt::format(
      "# forge export (LLaVA)\n\n"
      "Exported by forge {} from a `{}` + `{}` + `{}` checkpoint. Load it with\n\n"
      "```python\nfrom transformers import AutoProcessor, LlavaForConditionalGeneration\n"
      "model = LlavaForConditionalGeneration.from_pretrained(\"<this folder>\")\n"
      "processor = AutoProcessor.from_pretrained(\"<this folder>\")\n```\n\n"
      "## Prompt layout (reproduces forge's training order)\n\n"
      "forge puts the {} image tokens first, then the text, in one causal stream, with **no BOS** and no\n"
      "separator: `[<image> x {}][prompt][caption][EOS]`. The last image position predicts the first text\n"
      "token. Build the same ids with\n\n"
      "```python\ninputs = processor(images=image, text=\"<image>\" + prompt, add_special_tokens=False,\n"
      "                   return_tensors=\"pt\")\nout = model.generate(**inputs, max_new_tokens=64)\n```\n\n"
      "The processor expands `<image>` (id {}) to {} copies. The image features are the tower's\n"
      "`hidden_states[{}]` (vision_feature_select_strategy \"{}\"), as forge's `vision_encoder.feature_layer`.\n",
      FORGE_SDK_VERSION_STRING, job.vlm->arch, job.vision_encoder->type, job.adapter->type, n_image, n_image, img.id,
      n_image, layer, strategy);
  if (!job.data.chat_template.empty())
    r += fmt::format(
        "\nTraining wrapped every sample with `data.chat_template` = `{}`: the text after the image tokens is\n"
        "that template with `{{prompt}}` filled in, cut just before `{{text}}` (the caption the model writes).\n",
        job.data.chat_template);
  if (img.grow)
    r += fmt::format(
        "\nThe tokenizer used every id of the embedding, so `<image>` got a new id {}: the embedding\n"
        "and the head grew by one zero row (its logit is always 0).\n",
        img.id);
  if (!has_tokenizer)
    r += fmt::format(
        "\n**No tokenizer is included**: the model was trained with forge's byte-level tokenizer (ids 0-255 are\n"
        "the UTF-8 bytes, 256 PAD, 257 BOS, 258 EOS), which has no Hugging Face equivalent, so AutoProcessor\n"
        "cannot load this folder. Build `input_ids` yourself: {} copies of id {} followed by the text's bytes,\n"
        "and preprocess images as preprocessor_config.json says.\n",
        n_image, img.id);
  r += "\nImage preprocessing (preprocessor_config.json) is forge's: resize to the tower's size with the same\n"
       "filter, scale to [0, 1], normalise with the tower's mean and std. An image already at that size gives\n"
       "forge's pixel values exactly; a resized one differs by the resampling of PIL versus forge's only.\n";
  return r;
}

void export_llava(const ExportRequest& req, Staging& st, ExportReport& rep) {
  const JobConfig& job = *req.job;
  VLMImpl& model = *req.model;
  const std::string family = tower_family(job);
  const int64_t layer_cfg = feature_layer(job);
  if (family == "siglip" && layer_cfg == 0)
    throw UserError(
        "the SigLIP tower outputs last_hidden_state after post_layernorm (vision_encoder.feature_layer = 0), which "
        "LLaVA cannot reproduce (it takes hidden_states[k] without post_layernorm). Train with "
        "vision_encoder.feature_layer = -1 (or -2, as LLaVA-1.5), or export the parts with --layout parts");
  const int64_t layer = layer_cfg == 0 ? -1 : layer_cfg;
  const std::string strategy = family == "clip" ? "default" : "full";
  auto tok = make_tokenizer(job.data);
  const std::string tok_path = tokenizer_json(job.data);
  std::optional<json> tok_json;
  if (!tok_path.empty()) tok_json = read_json_file(tok_path);
  const int64_t V = job.model.vocab_size;
  const ImageToken img =
      pick_image_token(tok_json ? &*tok_json : nullptr, tok_json ? vocab_of(*tok_json) : tok->vocab_size(), V);
  const int64_t V_out = img.grow ? V + 1 : V;

  // Weights under the names transformers 5 writes for LLaVA (save_pretrained's, which it also loads).
  std::set<const void*> taken;
  Tensors out;
  for (auto& [name, t] : hf_text_weights(model, &taken)) {
    at::Tensor w = t;
    if (img.grow && (name == "model.embed_tokens.weight" || name == "lm_head.weight"))
      w = at::cat({w, at::zeros({1, w.size(1)}, w.options())}, 0);
    out.emplace_back(name == "lm_head.weight" ? "language_model.lm_head.weight" : "language_model." + name, w);
  }
  const std::string tower_prefix = "vision_encoder.vision_tower.";
  const std::map<std::string, std::string> projector{{"adapter.proj1.weight", "multi_modal_projector.linear_1.weight"},
                                                     {"adapter.proj1.bias", "multi_modal_projector.linear_1.bias"},
                                                     {"adapter.proj2.weight", "multi_modal_projector.linear_2.weight"},
                                                     {"adapter.proj2.bias", "multi_modal_projector.linear_2.bias"}};
  std::vector<std::string> left;
  for (const auto& [name, t] : state_dict(model)) {
    if (taken.count(key_of(t))) continue;
    at::Tensor w = t.detach().to(at::kCPU, at::kFloat).contiguous();
    if (util::starts_with(name, tower_prefix)) {
      out.emplace_back("vision_tower." + name.substr(tower_prefix.size()), w);
    } else if (auto it = projector.find(name); it != projector.end()) {
      out.emplace_back(it->second, w);
    } else {
      left.push_back(name);
    }
    taken.insert(key_of(t));
  }
  if (!left.empty())
    throw UserError(fmt::format("export: LLaVA has no place for {} (use --layout parts)", util::join(left, ", ")));
  st.tensors("model.safetensors", out);

  json text = text_config(job.model, *tok, V_out);
  text.erase("architectures");
  const Preprocess pre = model.vision_encoder->preprocess();
  json vision = vision_config(*job.vision_encoder, pre.image_size);
  const int64_t patch = vision.value("patch_size", int64_t{16});
  json cfg{{"architectures", {"LlavaForConditionalGeneration"}},
           {"model_type", "llava"},
           {"text_config", text},
           {"vision_config", vision},
           {"image_token_index", img.id},
           {"image_seq_length", model.visual_tokens()},
           {"projector_hidden_act", job.adapter->activation},
           {"vision_feature_layer", layer},
           {"vision_feature_select_strategy", strategy},
           {"multimodal_projector_bias", true},
           {"tie_word_embeddings", job.model.tie_embeddings},
           {"dtype", "float32"}};
  st.json_file("config.json", cfg);
  st.json_file("generation_config.json", generation_config(*tok));
  const std::vector<double> mean(pre.mean.begin(), pre.mean.end()), std(pre.std.begin(), pre.std.end());
  st.json_file("preprocessor_config.json", image_processor_config(family, pre.image_size, pre.resize, mean, std));
  if (tok_json) {
    if (img.added)
      (*tok_json)["added_tokens"].push_back({{"id", img.id},
                                             {"content", "<image>"},
                                             {"single_word", false},
                                             {"lstrip", false},
                                             {"rstrip", false},
                                             {"normalized", false},
                                             {"special", true}});
    st.text("tokenizer.json", tok_json->dump() + "\n");
    const fs::path tc = fs::path(tok_path).parent_path() / "tokenizer_config.json";
    json tcfg = fs::exists(tc) ? read_json_file(tc.string()) : json::object();
    if (!tcfg.contains("tokenizer_class")) tcfg["tokenizer_class"] = "PreTrainedTokenizerFast";
    tcfg["processor_class"] = "LlavaProcessor";
    tcfg["model_max_length"] = job.model.max_seq_len;
    st.json_file("tokenizer_config.json", tcfg);
    st.json_file("processor_config.json", {{"processor_class", "LlavaProcessor"},
                                           {"image_token", "<image>"},
                                           {"patch_size", patch},
                                           {"vision_feature_select_strategy", strategy},
                                           {"num_additional_image_tokens", family == "clip" ? 1 : 0}});
  } else {
    rep.notes.push_back(
        "no tokenizer exported: the model was trained with forge's byte-level tokenizer, which has no Hugging Face "
        "equivalent; AutoProcessor cannot load the folder (README.md says how to build input_ids)");
  }
  if (img.grow)
    rep.notes.push_back(
        fmt::format("the tokenizer uses every embedding row, so <image> got the new id {}: the "
                    "embedding and head grew by one zero row",
                    img.id));
  st.text("README.md", llava_readme(job, model.visual_tokens(), img, tok_json.has_value(), strategy, layer));
  rep.facts.push_back(fmt::format("<image> is id {}; {} image tokens; vision_feature_layer {}, strategy \"{}\"", img.id,
                                  model.visual_tokens(), layer, strategy));
}

// ------------------------------------------------------------ parts

void export_parts(const ExportRequest& req, Staging& st, ExportReport& rep) {
  const JobConfig& job = *req.job;
  VLMImpl& model = *req.model;
  auto tok = make_tokenizer(job.data);
  json manifest{{"format", "forge-hf-parts"},
                {"forge_version", FORGE_SDK_VERSION_STRING},
                {"checkpoint", req.step_dir},
                {"arch", job.vlm->arch},
                {"vision_encoder", job.vision_encoder->type},
                {"adapter", job.adapter->type},
                {"image_tokens", model.visual_tokens()},
                {"residual_image_tokens", model.residual_image_tokens()},
                {"forge_config", "forge_config.toml"},
                {"prompt_layout", model.residual_image_tokens() > 0
                                      ? "[image tokens][prompt][caption][EOS], no BOS (D1)"
                                      : "[BOS][prompt][caption][EOS], image through cross-attention (D1)"},
                {"chat_template", job.data.chat_template}};

  std::set<const void*> taken;
  Tensors text = hf_text_weights(model, &taken);
  if (text.empty() && job.model.num_experts > 0)
    throw UserError(fmt::format("export: the decoder has mixture-of-experts layers (model.num_experts = {}), and the "
                                "exported language model is a dense Llama-family decoder; there is no dense "
                                "language model to export",
                                job.model.num_experts));
  if (text.empty())
    throw UserError(
        fmt::format("export: the {} arch gives no dense text decoder (DecoderHooks::dense_text_weights is "
                    "empty), so there is no language model to export",
                    job.vlm->arch));
  json tc = text_config(job.model, *tok, job.model.vocab_size);
  st.json_file("language_model/config.json", tc);
  st.json_file("language_model/generation_config.json", generation_config(*tok));
  st.tensors("language_model/model.safetensors", text);
  const std::string tok_path = tokenizer_json(job.data);
  json lm{{"folder", "language_model"},
          {"loads_with", "transformers.AutoModelForCausalLM"},
          {"model_type", tc["model_type"]},
          {"tensors", text.size()},
          {"from", "the decoder's text path (DecoderHooks::dense_text_weights)"}};
  if (!tok_path.empty()) {
    st.text("language_model/tokenizer.json", read_json_file(tok_path).dump() + "\n");
    const fs::path tcp = fs::path(tok_path).parent_path() / "tokenizer_config.json";
    if (fs::exists(tcp)) st.json_file("language_model/tokenizer_config.json", read_json_file(tcp.string()));
    lm["tokenizer"] = "tokenizer.json";
  } else {
    lm["tokenizer"] = "forge's byte-level tokenizer (ids 0-255 bytes, 256 PAD, 257 BOS, 258 EOS); not exported";
    rep.notes.push_back("no tokenizer exported: forge's byte-level tokenizer has no Hugging Face equivalent");
  }
  manifest["language_model"] = lm;

  const std::string family = tower_family(job);
  const std::string tower_prefix = "vision_encoder.vision_tower.";
  if (!family.empty()) {
    Tensors tower;
    for (const auto& [name, t] : state_dict(model)) {
      if (!util::starts_with(name, tower_prefix) || taken.count(key_of(t))) continue;
      tower.emplace_back(name.substr(tower_prefix.size()), t.detach().to(at::kCPU, at::kFloat).contiguous());
      taken.insert(key_of(t));
    }
    const Preprocess pre = model.vision_encoder->preprocess();
    json vc = vision_config(*job.vision_encoder, pre.image_size);
    vc["architectures"] = {tower_class(family)};
    st.json_file("vision_tower/config.json", vc);
    st.tensors("vision_tower/model.safetensors", tower);
    const std::vector<double> mean(pre.mean.begin(), pre.mean.end()), std(pre.std.begin(), pre.std.end());
    if (family != "siglip2") {
      st.json_file("vision_tower/preprocessor_config.json",
                   image_processor_config(family, pre.image_size, pre.resize, mean, std));
    } else if (const fs::path pp = fs::path(job.vision_encoder->resolved_path()) / "preprocessor_config.json";
               fs::exists(pp)) {
      st.json_file("vision_tower/preprocessor_config.json", read_json_file(pp.string()));
    }
    const int64_t layer = feature_layer(job);
    std::string output = layer != 0         ? fmt::format("hidden_states[{}]", layer)
                         : family == "clip" ? "last_hidden_state (before post_layernorm)"
                                            : "last_hidden_state (after post_layernorm)";
    if (family == "clip") output += " without the class token (position 0)";
    manifest["vision_tower"] = {{"folder", "vision_tower"},
                                {"loads_with", "transformers." + tower_class(family)},
                                {"feature_layer", layer},
                                {"forge_uses", output},
                                {"tensors", tower.size()}};
  } else {
    manifest["vision_tower"] = nullptr;
    rep.notes.push_back(
        fmt::format("vision encoder \"{}\" has no Hugging Face model; its weights (if any) are in "
                    "forge_extra.safetensors",
                    job.vision_encoder->type));
  }

  Tensors extra;
  json listed = json::object();
  for (const auto& [name, t] : state_dict(model)) {
    if (taken.count(key_of(t))) continue;
    taken.insert(key_of(t));
    extra.emplace_back(name, t.detach().to(at::kCPU, at::kFloat).contiguous());
    listed[name] = t.sizes().vec();
  }
  st.tensors("forge_extra.safetensors", extra);
  manifest["forge_extra"] = {{"file", "forge_extra.safetensors"},
                             {"names", "forge's state-dict names (vision_encoder.*, adapter.*, transformer.*)"},
                             {"tensors", listed}};
  manifest["how_to_load"] = {
      {"forge",
       "every tensor of language_model/ maps back with forge's hf_name_of (model.layers.<i>.self_attn.q_proj "
       "<-> transformer.layers.<i>.attention.q_proj), vision_tower/ is vision_encoder.vision_tower.*, and "
       "forge_extra.safetensors holds the rest by name"},
      {"python",
       "AutoModelForCausalLM.from_pretrained('language_model'); " +
           (family.empty() ? std::string("no tower") : tower_class(family) + ".from_pretrained('vision_tower')") +
           "; safetensors.torch.load_file('forge_extra.safetensors')"}};
  st.text("forge_config.toml", "# resolved config of the exported checkpoint\n" + to_toml(job) + "\n");
  st.json_file("manifest.json", manifest);
}

}  // namespace

std::string llava_blocker(const JobConfig& job) {
  if (!job.vlm || !job.vision_encoder || !job.adapter) return "the config has no [vlm]";
  if (job.vlm->arch != "joint_decoder")
    return fmt::format("vlm.arch = \"{}\" (LLaVA is joint_decoder: image tokens then text in one stream)",
                       job.vlm->arch);
  if (job.adapter->type != "mlp_2layer")
    return fmt::format("adapter.type = \"{}\" (LLaVA's projector is mlp_2layer)", job.adapter->type);
  if (job.adapter->hidden_dim != 0 && job.adapter->hidden_dim != job.model.dim)
    return fmt::format("adapter.hidden_dim = {} (LLaVA's projector is {} wide, model.dim)", job.adapter->hidden_dim,
                       job.model.dim);
  const std::string family = tower_family(job);
  if (family != "siglip" && family != "clip")
    return fmt::format("the vision encoder is \"{}\"{} (LLaVA takes a SigLIP or CLIP tower)", job.vision_encoder->type,
                       family == "siglip2" ? " (a SigLIP2 NaFlex folder)" : "");
  return "";
}

ExportReport export_hf(const ExportRequest& req) {
  if (!req.job || !req.model) throw InvalidArgument("export_hf: job and model are required");
  if (!req.job->is_vlm()) throw UserError("export: the checkpoint's config has no [vlm]");
  if (req.layout != "auto" && req.layout != "llava" && req.layout != "parts")
    throw UsageError(fmt::format("--layout \"{}\": expected auto, llava or parts", req.layout));
  const std::string blocker = llava_blocker(*req.job);
  std::string layout = req.layout;
  if (layout == "auto") layout = blocker.empty() ? "llava" : "parts";
  if (layout == "llava" && !blocker.empty())
    throw UserError(fmt::format("--layout llava: {}; export the parts with --layout parts (or auto)", blocker));
  torch::NoGradGuard no_grad;
  Staging st(req.out, req.force);
  ExportReport rep;
  rep.layout = layout;
  if (layout == "llava") {
    export_llava(req, st, rep);
  } else {
    if (req.layout == "auto") rep.notes.push_back("not a LLaVA model: " + blocker);
    export_parts(req, st, rep);
  }
  st.commit();
  rep.out = st.out().string();
  rep.files = st.files();
  return rep;
}

}  // namespace forge::hf
