#include "core/config/loader.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/config/pretrained.h"
#include "core/config/visitors.h"
#include "core/registry/registry.h"
#include "core/util/strings.h"
#include "forge/logging.h"

namespace fs = std::filesystem;

namespace forge {

using config::Diagnostics;
using config::DocWriter;
using config::TomlReader;
using config::TomlWriter;

namespace {

const std::vector<std::string> kSections = {"model", "vision_encoder", "adapter", "vlm",    "video",   "train",
                                            "optimizer", "scheduler", "data", "checkpoint", "metrics",
                                            "eval",  "distributed", "plugins"};
// Sections KempnerForge has and forge does not implement: accepted, one warning each.
const std::vector<std::pair<std::string, std::string>> kUnimplementedSections = {
    {"profiling", "run a profiler around `forge train` instead"},
};
// Sections KempnerForge has that would change what is trained: an error (no silent downgrade).
const std::vector<std::pair<std::string, std::string>> kRefusedSections = {};

// One override "--a.b.c=value" merged into `root`.
void apply_override(toml::table& root, const std::string& arg, Diagnostics& diags) {
  std::string source = "command line (" + arg + ")";
  if (!util::starts_with(arg, "--")) {
    diags.error(nullptr, "", fmt::format("override '{}' must look like --section.key=value", arg));
    return;
  }
  std::string body = arg.substr(2);
  std::string key_path = body, value_text = "true";
  if (auto eq = body.find('='); eq != std::string::npos) {
    key_path = body.substr(0, eq);
    value_text = body.substr(eq + 1);
  }
  auto parts = util::split(key_path, '.');
  bool ok = parts.size() >= 2;
  for (const auto& p : parts) ok = ok && !p.empty();
  if (!ok) {
    diags.error(nullptr, "",
                fmt::format("override '{}' must look like --section.key=value (e.g. --model.dim=256)", arg));
    return;
  }
  // The value in TOML syntax; a bare word that is not TOML stays a string.
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value_text, source);
  } catch (const toml::parse_error&) {
    try {
      parsed = toml::parse("v = " + TomlWriter::format_string(value_text), source);
    } catch (const toml::parse_error& e) {  // e.g. bytes that are not UTF-8
      diags.error(nullptr, "", fmt::format("override '{}': the value is neither TOML nor text ({}); "
                                           "write it as UTF-8", arg, e.description()));
      return;
    }
  }
  toml::node* value = parsed.get("v");
  toml::table* t = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    toml::node* n = t->get(parts[i]);
    if (!n && i == 0 && std::find(kSections.begin(), kSections.end(), parts[0]) == kSections.end() &&
        std::none_of(kUnimplementedSections.begin(), kUnimplementedSections.end(),
                     [&](const auto& u) { return u.first == parts[0]; }) &&
        std::none_of(kRefusedSections.begin(), kRefusedSections.end(),
                     [&](const auto& u) { return u.first == parts[0]; })) {
      std::string hint = util::did_you_mean(parts[0], kSections);
      diags.error(nullptr, "",
                  fmt::format("override '{}': unknown section [{}]{} Sections: {}", arg, parts[0],
                              hint.empty() ? std::string(".") : fmt::format("; did you mean --{}.{}?", hint,
                                                                             util::join(std::vector<std::string>(
                                                                                            parts.begin() + 1,
                                                                                            parts.end()),
                                                                                        ".")),
                              util::join(kSections, ", ")));
      return;
    }
    if (!n) {
      t->insert(parts[i], toml::table{});
      n = t->get(parts[i]);
    }
    if (!n->is_table()) {
      diags.error(nullptr, "",
                  fmt::format("override '{}': '{}' is not a table in the config, so it has no key '{}'", arg,
                              util::join(std::vector<std::string>(parts.begin(), parts.begin() + i + 1), "."),
                              parts[i + 1]));
      return;
    }
    t = n->as_table();
  }
  t->insert_or_assign(parts.back(), std::move(*value));  // moving keeps the source region
}

const toml::table* section(const toml::table& root, const std::string& name) {
  const toml::node* n = root.get(name);
  return n ? n->as_table() : nullptr;
}

// Keys a struct declares (via the doc visitor).
template <class T>
std::vector<std::string> declared_keys(T& cfg) {
  DocWriter w;
  cfg.visit(w);
  std::vector<std::string> out;
  for (const auto& r : w.rows())
    if (r.key.find('[') == std::string::npos) out.push_back(r.key);
  return out;
}

std::string read_string_key(const toml::table* t, const char* key, const std::string& def) {
  if (!t) return def;
  if (auto n = t->get(key)) {
    if (auto s = n->as_string()) return s->get();
  }
  return def;
}

// Reads a plugin-dispatched section ([vision_encoder] by type, [adapter] by
// type, [vlm] by arch). Returns null when the plugin is unknown (reported).
template <class Cfg, class MakeFn, class KeysOfOther>
std::shared_ptr<Cfg> read_dispatched(const toml::table& root, const std::string& name, const std::string& selector,
                                     const std::string& default_choice, const std::string& kind, Registry& registry,
                                     Diagnostics& diags, MakeFn make, KeysOfOther others) {
  const toml::table* t = section(root, name);
  std::string choice = read_string_key(t, selector.c_str(), default_choice);
  std::shared_ptr<Cfg> cfg;
  try {
    cfg = make(choice);
  } catch (const PluginError& e) {
    const toml::node* where = t ? t->get(selector) : nullptr;
    diags.error(where ? where : root.get(name), name + "." + selector, e.what());
    return nullptr;
  }
  TomlReader reader(t, name, diags, root.get(name));
  cfg->visit(reader);
  reader.finish(others(choice, reader.known_keys()));
  return cfg;
}

}  // namespace

std::vector<std::string> plugin_search_path(const std::vector<std::string>& cli,
                                            const std::vector<std::string>& toml_paths, bool use_env,
                                            bool use_builtin) {
  std::vector<std::string> dirs = cli;
  if (use_env) {
    if (const char* env = std::getenv("FORGE_PLUGIN_PATH")) {
      for (const auto& p : util::split(env, ':'))
        if (!p.empty()) dirs.push_back(p);
    }
  }
  for (const auto& p : toml_paths) dirs.push_back(p);
  if (use_builtin) {
    std::string builtin = Registry::builtin_plugin_dir();
    if (!builtin.empty()) dirs.push_back(builtin);
  }
  return dirs;
}

namespace {

// A plugin's config struct, holding the plugin's library, with its selector set.
template <class Cfg, class Lookup>
std::shared_ptr<Cfg> plugin_config(Registry& registry, const std::string& kind, const std::string& name,
                                   Lookup lookup) {
  std::shared_ptr<Cfg> cfg = lookup(name)->make_config();
  return registry.hold(kind, name, cfg);
}

}  // namespace

std::shared_ptr<VLMConfig> make_vlm_config(Registry& registry, const std::string& arch) {
  auto cfg = plugin_config<VLMConfig>(registry, "arch", arch, [&](const std::string& n) { return registry.arch(n); });
  cfg->arch = arch;
  return cfg;
}

std::shared_ptr<EncoderConfig> make_encoder_config(Registry& registry, const std::string& type) {
  auto cfg = plugin_config<EncoderConfig>(registry, "encoder", type,
                                          [&](const std::string& n) { return registry.encoder(n); });
  cfg->type = type;
  return cfg;
}

std::shared_ptr<AdapterConfig> make_adapter_config(Registry& registry, const std::string& type) {
  auto cfg = plugin_config<AdapterConfig>(registry, "adapter", type,
                                          [&](const std::string& n) { return registry.adapter(n); });
  cfg->type = type;
  return cfg;
}

static LoadedConfig load_table(toml::table root, const std::string& source, Registry& registry,
                               const LoadOptions& options, Diagnostics& diags) {
  for (const auto& o : options.overrides) apply_override(root, o, diags);
  diags.throw_if_errors();

  LoadedConfig out;
  JobConfig& job = out.job;
  job.source = source;

  // [plugins] first: the folders it names are searched for the plugins the rest needs.
  {
    TomlReader r(section(root, "plugins"), "plugins", diags, root.get("plugins"));
    job.plugins.visit(r);
    r.finish();
  }
  registry.load_directories(
      plugin_search_path(options.plugin_paths, job.plugins.paths, options.use_env_plugin_path,
                         options.use_builtin_plugins));

  // Top-level structure.
  for (auto&& [k, v] : root) {
    std::string key(k.str());
    bool known = std::find(kSections.begin(), kSections.end(), key) != kSections.end();
    auto unimpl = std::find_if(kUnimplementedSections.begin(), kUnimplementedSections.end(),
                               [&](const auto& p) { return p.first == key; });
    auto refused = std::find_if(kRefusedSections.begin(), kRefusedSections.end(),
                                [&](const auto& p) { return p.first == key; });
    if (refused != kRefusedSections.end()) {
      diags.error(&v, key, refused->second);
      continue;
    }
    if (unimpl != kUnimplementedSections.end()) {
      diags.warning(&v, key,
                    fmt::format("section accepted for compatibility with KempnerForge, but forge does not implement "
                                "it{}{}; it is ignored",
                                unimpl->second.empty() ? "" : ": ", unimpl->second));
      continue;
    }
    if (!known) {
      std::string hint = util::did_you_mean(key, kSections);
      diags.error(&v, key,
                  fmt::format("unknown section{} Sections: {}",
                              hint.empty() ? std::string(".") : fmt::format("; did you mean [{}]?", hint),
                              util::join(kSections, ", ")));
      continue;
    }
    if (!v.is_table())
      diags.error(&v, key, fmt::format("expected a table ([{}]), got {}", key, config::describe_node(v)));
  }

  auto read_plain = [&](auto& cfg, const std::string& name) {
    TomlReader r(section(root, name), name, diags, root.get(name));
    cfg.visit(r);
    r.finish();
  };
  read_plain(job.model, "model");
  read_plain(job.train, "train");
  read_plain(job.optimizer, "optimizer");
  read_plain(job.scheduler, "scheduler");
  read_plain(job.data, "data");
  read_plain(job.checkpoint, "checkpoint");
  read_plain(job.metrics, "metrics");
  read_plain(job.eval, "eval");
  read_plain(job.distributed, "distributed");
  if (root.get("video")) {
    job.video.emplace();
    read_plain(*job.video, "video");
    if (!root.get("vlm"))
      diags.error(root.get("video"), "video", "[video] trains a vision-language model: it needs [vlm] and [vision_encoder]");
    // The default ("shapes") is what a resolved config (a checkpoint's config.toml) writes out; any other is an error.
    if (const toml::table* dt = section(root, "data"); dt && dt->get("type") && job.data.type != "shapes")
      diags.error(dt->get("type"), "data.type",
                  "a job with [video] reads its clips from [video] data_root; [data] gives only the tokenizer and the "
                  "loader's settings, so remove data.type (and data.path)");
  }
  if (!diags.has_errors()) apply_init_from_hf(root, job, diags);

  // Keys that belong to another variant of a dispatched section.
  auto foreign_keys = [&](const std::string& kind, auto make) {
    return [&registry, kind, make](const std::string& chosen, const std::vector<std::string>& known) {
      std::vector<std::pair<std::string, std::string>> out;
      for (const auto& other : registry.names(kind)) {
        if (other == chosen) continue;
        try {
          auto cfg = make(other);
          for (const auto& key : declared_keys(*cfg)) {
            if (std::find(known.begin(), known.end(), key) != known.end()) continue;
            bool dup = false;
            for (auto& p : out) dup = dup || p.first == key;
            if (!dup)
              out.emplace_back(key, fmt::format("it belongs to {} '{}' (this config selects '{}')",
                                                kind == "arch" ? "arch" : kind + " type", other, chosen));
          }
        } catch (const Error&) {
        }
      }
      return out;
    };
  };

  bool has_vlm = root.get("vlm") != nullptr;
  bool has_encoder = root.get("vision_encoder") != nullptr;
  bool has_adapter = root.get("adapter") != nullptr;
  auto make_vlm = [&](const std::string& a) { return make_vlm_config(registry, a); };
  auto make_enc = [&](const std::string& t) { return make_encoder_config(registry, t); };
  auto make_ad = [&](const std::string& t) { return make_adapter_config(registry, t); };
  if (has_vlm) {
    job.vlm = read_dispatched<VLMConfig>(root, "vlm", "arch", "joint_decoder", "arch", registry, diags, make_vlm,
                                         foreign_keys("arch", make_vlm));
  }
  if (has_encoder || has_vlm) {
    if (has_vlm && !has_encoder) {
      diags.error(root.get("vlm"), "vlm",
                  "[vlm] needs a [vision_encoder] section (e.g. type = \"random\" for the stub, or \"siglip\" with a "
                  "path)");
    } else {
      job.vision_encoder = read_dispatched<EncoderConfig>(root, "vision_encoder", "type", "random", "encoder",
                                                          registry, diags, make_enc, foreign_keys("encoder", make_enc));
    }
  }
  if (has_adapter || has_vlm) {
    // [vlm] without [adapter]: the default adapter (mlp_2layer) is materialised.
    job.adapter = read_dispatched<AdapterConfig>(root, "adapter", "type", "mlp_2layer", "adapter", registry, diags,
                                                 make_ad, foreign_keys("adapter", make_ad));
  }

  // ---------------------------------------------------------- cross-section checks
  auto at = [&](const std::string& sec, const std::string& key) -> const toml::node* {
    const toml::table* t = section(root, sec);
    if (t) {
      if (auto n = t->get(key)) return n;
    }
    const toml::node* s = root.get(sec);
    return s ? s : nullptr;
  };
  const ModelConfig& m = job.model;
  if (job.train.seq_len > m.max_seq_len) {
    diags.error(at("train", "seq_len"), "train.seq_len",
                fmt::format("train.seq_len = {} exceeds model.max_seq_len = {}; set train.seq_len <= {}",
                            job.train.seq_len, m.max_seq_len, m.max_seq_len));
  }
  if (job.vlm && job.vision_encoder && job.adapter && !diags.has_errors()) {
    try {
      auto enc_plugin = registry.encoder(job.vision_encoder->type);
      out.encoder_info = enc_plugin->describe(*job.vision_encoder);
    } catch (const UserError& e) {
      diags.error(at("vision_encoder", job.vision_encoder->path.empty() ? "type" : "path"), "vision_encoder.path",
                  e.what());
    }
    if (!diags.has_errors()) {
      const EncoderInfo& info = out.encoder_info;
      auto ad_plugin = registry.adapter(job.adapter->type);
      try {
        out.visual_tokens = job.video ? job.video->max_frames * pooled_token_count(info.num_tokens, job.video->pool_window)
                                      : ad_plugin->output_num_tokens(*job.adapter, info.num_tokens);
      } catch (const UserError& e) {
        if (job.video)
          diags.error(at("video", "pool_window"), "video.pool_window", e.what());
        else
          diags.error(at("adapter", "pool_window"), "adapter.pool_window", e.what());
      }
      TomlReader ar(section(root, "adapter"), "adapter", diags, root.get("adapter") ? root.get("adapter") : root.get("vlm"));
      ad_plugin->check(*job.adapter, info, ar);
      TomlReader vr(section(root, "vlm"), "vlm", diags, root.get("vlm"));
      registry.arch(job.vlm->arch)->check(*job.vlm, m, vr);

      out.residual_tokens = job.vlm->residual_stream_image_tokens(out.visual_tokens);
      int64_t required = out.residual_tokens + job.vlm->max_text_len;
      std::string layout = fmt::format(
          "{} image tokens in the residual stream (encoder {}: {} tokens, adapter {}: {} tokens{}, arch {}) + "
          "vlm.max_text_len {} = {} positions",
          out.residual_tokens, job.vision_encoder->type, info.num_tokens, job.adapter->type, out.visual_tokens,
          job.video ? fmt::format(" = video.max_frames {} x {} per frame at video.pool_window {}",
                                  job.video->max_frames, out.visual_tokens / job.video->max_frames,
                                  job.video->pool_window)
                    : std::string(),
          job.vlm->arch, job.vlm->max_text_len, required);
      if (m.max_seq_len < required) {
        diags.error(at("model", "max_seq_len"), "model.max_seq_len",
                    fmt::format("{} is too small: {}; set max_seq_len >= {} (or lower vlm.max_text_len)", m.max_seq_len,
                                layout, required));
      } else if (job.train.seq_len < required) {
        diags.error(at("train", "seq_len"), "train.seq_len",
                    fmt::format("{} is too small: {}; set seq_len >= {}", job.train.seq_len, layout, required));
      }
      // D6: the image size comes from the encoder. Video frames: video.frame_size, unless the encoder fixes it.
      if (job.video) {
        const toml::table* vt = section(root, "video");
        const int64_t fixed = info.preprocess.image_size;
        if (fixed > 0 && vt && vt->get("frame_size") && job.video->frame_size != fixed)
          diags.error(at("video", "frame_size"), "video.frame_size",
                      fmt::format("frames of {0}x{0} do not fit the encoder '{1}', which takes {2}x{2}; set "
                                  "frame_size = {2} (or leave it out to use the encoder's size)",
                                  job.video->frame_size, job.vision_encoder->type, fixed));
        if (fixed > 0) job.video->frame_size = fixed;
        job.data.hf_image_size = job.video->frame_size;  // the loader's size for every frame
      } else if (info.preprocess.image_size > 0) {
        const toml::table* dt = section(root, "data");
        bool explicit_size = dt && dt->get("hf_image_size");
        if (!explicit_size) {
          job.data.hf_image_size = info.preprocess.image_size;
        } else if (job.data.hf_image_size != info.preprocess.image_size) {
          diags.error(at("data", "hf_image_size"), "data.hf_image_size",
                      fmt::format("images of {0}x{0} do not fit the encoder '{1}', which takes {2}x{2}; set "
                                  "hf_image_size = {2} (or leave it out to use the encoder's size)",
                                  job.data.hf_image_size, job.vision_encoder->type, info.preprocess.image_size));
        }
      }
    }
  }
  diags.throw_if_errors();
  out.warnings = diags.warnings();
  return out;
}

LoadedConfig load_config(const std::string& path, Registry& registry, const LoadOptions& options) {
  Diagnostics diags(path);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw ConfigError(std::vector<ConfigDiagnostic>{
        ConfigDiagnostic{path, 0, 0, "", fs::exists(path, ec) ? "not a regular file" : "config file not found", false}});
  }
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    throw ConfigError(std::vector<ConfigDiagnostic>{ConfigDiagnostic{
        path, static_cast<int>(src.begin.line), static_cast<int>(src.begin.column), "",
        fmt::format("TOML syntax error: {}", e.description()), false}});
  }
  return load_table(std::move(root), path, registry, options, diags);
}

LoadedConfig load_config_text(const std::string& text, const std::string& source_name, Registry& registry,
                              const LoadOptions& options) {
  Diagnostics diags(source_name);
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    throw ConfigError(std::vector<ConfigDiagnostic>{ConfigDiagnostic{
        source_name, static_cast<int>(src.begin.line), static_cast<int>(src.begin.column), "",
        fmt::format("TOML syntax error: {}", e.description()), false}});
  }
  return load_table(std::move(root), source_name, registry, options, diags);
}

std::string to_toml(const JobConfig& job_in) {
  auto& job = const_cast<JobConfig&>(job_in);  // the writer only reads
  std::string out;
  auto sec = [&](const char* name, auto& cfg) {
    TomlWriter w;
    cfg.visit(w);
    out += fmt::format("[{}]\n{}\n", name, w.str());
  };
  sec("model", job.model);
  if (job.vision_encoder) sec("vision_encoder", *job.vision_encoder);
  if (job.adapter) sec("adapter", *job.adapter);
  if (job.vlm) sec("vlm", *job.vlm);
  if (job.video) sec("video", *job.video);
  sec("train", job.train);
  sec("optimizer", job.optimizer);
  sec("scheduler", job.scheduler);
  sec("data", job.data);
  sec("checkpoint", job.checkpoint);
  sec("metrics", job.metrics);
  sec("eval", job.eval);
  sec("distributed", job.distributed);
  sec("plugins", job.plugins);
  while (out.size() > 1 && out[out.size() - 1] == '\n' && out[out.size() - 2] == '\n') out.pop_back();
  return out;
}

std::string config_reference_markdown(Registry& registry) {
  std::string out;
  auto doc = [&](const std::string& title, auto& cfg, const std::string& intro) {
    DocWriter w;
    cfg.visit(w);
    out += fmt::format("## [{}]\n\n{}{}\n", title, intro.empty() ? "" : intro + "\n\n", w.markdown());
  };
  // Plugin-provided keys: those a plugin's struct adds over the base.
  auto plugin_rows = [&](const std::string& kind, const std::vector<std::string>& base_keys, auto make) {
    std::string s;
    for (const auto& name : registry.names(kind)) {
      const PluginRecord* rec = registry.find_record(kind, name);
      if (!rec || rec->name != name) continue;  // aliases are listed with their plugin
      auto cfg = make(name);
      DocWriter w;
      cfg->visit(w);
      DocWriter extra;
      std::string table = "| key | type | default | accepted | meaning |\n|---|---|---|---|---|\n";
      int n = 0;
      for (const auto& r : w.rows()) {
        if (std::find(base_keys.begin(), base_keys.end(), r.key) != base_keys.end() || !r.implemented) continue;
        table += fmt::format("| `{}` | {} | `{}` | {} | {} |\n", r.key, r.type, r.default_value, r.rule, r.help);
        ++n;
      }
      std::string aliases = rec->aliases.empty() ? "" : " (also: " + util::join(rec->aliases, ", ") + ")";
      s += fmt::format("### {} `{}`{} — plugins/{}/{}/\n\n{}\n\n", kind, name, aliases, kind, name, rec->description);
      s += n ? table + "\n" : "No keys of its own.\n\n";
    }
    return s;
  };
  auto all_keys = [](auto& cfg) {
    DocWriter w;
    cfg.visit(w);
    std::vector<std::string> out;
    for (const auto& r : w.rows()) out.push_back(r.key);
    return out;
  };
  ModelConfig model;
  doc("model", model, "The text decoder (names and defaults as in KempnerForge's ModelConfig).");
  EncoderConfig enc;
  doc("vision_encoder", enc, "Required with [vlm]. `type` picks the encoder plugin; its own keys follow.");
  out += plugin_rows("encoder", all_keys(enc), [&](const std::string& n) { return make_encoder_config(registry, n); });
  AdapterConfig ad;
  doc("adapter", ad, "Optional with [vlm] (defaults to mlp_2layer). `type` picks the adapter plugin.");
  out += plugin_rows("adapter", all_keys(ad), [&](const std::string& n) { return make_adapter_config(registry, n); });
  VLMConfig vlm;
  doc("vlm", vlm, "Makes the job a VLM. `arch` picks the arch plugin, which adds its own keys below.");
  out += plugin_rows("arch", all_keys(vlm), [&](const std::string& n) { return make_vlm_config(registry, n); });
  VideoConfig video;
  doc("video", video,
      "Optional with [vlm]: train on video clips (docs/video.md). Each clip gives `max_frames` frames, each encoded "
      "by the tower and pooled by the adapter; [data] then gives only the tokenizer and the loader's settings.");
  TrainConfig train;
  doc("train", train, "");
  OptimizerConfig opt;
  doc("optimizer", opt, "");
  SchedulerConfig sch;
  doc("scheduler", sch, "");
  DataConfig data;
  doc("data", data, "");
  CheckpointConfig ck;
  doc("checkpoint", ck, "");
  MetricsConfig met;
  doc("metrics", met, "");
  EvalConfig ev;
  doc("eval", ev, "");
  DistributedConfig dist;
  doc("distributed", dist, "");
  PluginsConfig pl;
  doc("plugins", pl, "");
  out += "## Sections accepted and ignored\n\n";
  for (const auto& [name, note] : kUnimplementedSections)
    out += fmt::format("- `[{}]`{}{}\n", name, note.empty() ? "" : ": ", note);
  if (!kRefusedSections.empty()) {
    out += "\n## Sections refused\n\n";
    for (const auto& [name, note] : kRefusedSections) out += fmt::format("- `[{}]`: {}\n", name, note);
  }
  return out;
}

}  // namespace forge
