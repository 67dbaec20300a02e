// Config parsing, overrides, validation messages (with line/column), round trip.
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::config_errors;
using forge::test::tiny_vlm_toml;

using forge::test::find_diag;

TEST_CASE("defaults follow the reference when a section is absent", "[config]") {
  auto cfg = load_config_text("[model]\ndim = 64\nn_heads = 4\n", "t.toml", builtin_registry());
  const auto& m = cfg.job.model;
  CHECK(m.dim == 64);
  CHECK(m.n_layers == 32);
  CHECK(m.vocab_size == 32000);
  CHECK(m.norm_type == "rmsnorm");
  CHECK(m.norm_eps == Approx(1e-5));
  CHECK_FALSE(m.n_kv_heads.has_value());
  CHECK(m.kv_heads() == 4);
  CHECK(cfg.job.train.batch_size == 8);
  CHECK(cfg.job.optimizer.betas == std::vector<double>{0.9, 0.95});
  CHECK(cfg.job.scheduler.name == "cosine");
  CHECK_FALSE(cfg.job.is_vlm());
}

TEST_CASE("FFN hidden size follows the reference rule", "[config]") {
  ModelConfig m;
  m.dim = 4096;
  CHECK(m.ffn_hidden() == 11008);
  m.ffn_dim_multiplier = 1.3;
  CHECK(m.ffn_hidden() == 14336);
  m.dim = 256;
  m.ffn_dim_multiplier = 1.0;
  CHECK(m.ffn_hidden() == 768);
  m.dim = 1024;
  CHECK(m.ffn_hidden() == 2816);
  m.ffn_hidden_dim = 100;
  CHECK(m.ffn_hidden() == 100);
}

TEST_CASE("a bad value names file, line, column, key, value and what is accepted", "[config]") {
  auto d = config_errors("[model]\ndim = 64\nnorm_type = \"rmsnrom\"\n");
  const auto* e = find_diag(d, "model.norm_type");
  REQUIRE(e);
  CHECK(e->file == "test.toml");
  CHECK(e->line == 3);
  CHECK(e->column == 13);
  CHECK_THAT(e->message, Catch::Contains("\"rmsnrom\"") && Catch::Contains("\"layernorm\"") &&
                             Catch::Contains("did you mean \"rmsnorm\""));
  CHECK_THAT(e->format(), Catch::StartsWith("test.toml:3:13: error: [model] norm_type:"));
}

TEST_CASE("bounds, types and cross-field rules are reported together", "[config]") {
  auto d = config_errors("[model]\ndim = -8\nn_layers = \"two\"\n[train]\nbatch_size = 0\n");
  const auto* dim = find_diag(d, "model.dim");
  REQUIRE(dim);
  CHECK(dim->line == 2);
  CHECK_THAT(dim->message, Catch::Contains("got -8") && Catch::Contains("must be > 0"));
  const auto* nl = find_diag(d, "model.n_layers");
  REQUIRE(nl);
  CHECK_THAT(nl->message, Catch::Contains("expected an integer") && Catch::Contains("\"two\""));
  REQUIRE(find_diag(d, "train.batch_size"));

  auto d2 = config_errors("[model]\ndim = 250\nn_heads = 4\nn_kv_heads = 3\n");
  REQUIRE(find_diag(d2, "model.dim"));
  CHECK_THAT(find_diag(d2, "model.dim")->message, Catch::Contains("not divisible by n_heads = 4"));
  REQUIRE(find_diag(d2, "model.n_kv_heads"));
  CHECK(find_diag(d2, "model.n_kv_heads")->line == 4);
}

TEST_CASE("unknown keys and sections get a did-you-mean", "[config]") {
  auto d = config_errors("[model]\ndimm = 3\n[trian]\nx = 1\n");
  const auto* k = find_diag(d, "model.dimm");
  REQUIRE(k);
  CHECK(k->line == 2);
  CHECK(k->column == 8);
  CHECK_THAT(k->message, Catch::Contains("unknown key") && Catch::Contains("did you mean 'dim'"));
  const auto* s = find_diag(d, "trian");
  REQUIRE(s);
  CHECK(s->line == 3);
  CHECK_THAT(s->message, Catch::Contains("did you mean [train]"));
}

TEST_CASE("TOML syntax errors carry line and column", "[config]") {
  auto d = config_errors("[model]\ndim = = 3\n");
  REQUIRE(d.size() == 1);
  CHECK(d[0].line == 2);
  CHECK(d[0].column > 0);
  CHECK_THAT(d[0].message, Catch::Contains("TOML syntax error"));
}

TEST_CASE("speed knobs KempnerForge has and forge does not implement warn once each", "[config]") {
  auto cfg = load_config_text(
      "[model]\ndim = 64\nsdpa_backend = \"flash\"\n[train]\ncompile_model = true\n[profiling]\nenable = false\n",
      "t.toml", builtin_registry());
  int sdpa = 0, compile = 0, profiling = 0;
  for (const auto& w : cfg.warnings) {
    CHECK(w.warning);
    if (w.key == "model.sdpa_backend") ++sdpa;
    if (w.key == "train.compile_model") ++compile;
    if (w.key == "profiling") ++profiling;
  }
  CHECK(sdpa == 1);
  CHECK(compile == 1);
  CHECK(profiling == 1);
}

TEST_CASE("no silent downgrade: keys that would change what is trained are errors unless neutral", "[config]") {
  struct Case {
    const char* toml;
    const char* key;
    const char* says;
  };
  const Case cases[] = {
      {"[data]\nhf_dataset_name = \"sayakpaul/coco-30-val-2014\"\n", "data.hf_dataset_name", "JSONL manifest"},
      {"[data]\npack_sequences = true\n", "data.pack_sequences", "sequence packing"},
      {"[data]\ndatasets = [{ path = \"a\" }]\n", "data.datasets", "dataset mixtures"},
      {"[eval]\nhf_dataset_name = \"x\"\n", "eval.hf_dataset_name", "Hugging Face eval data"},
      {"[distributed]\ntp = 2\n", "distributed.tp", "tensor parallelism"},
      {"[distributed]\nep = 4\n", "distributed.ep", "expert parallelism"},
      {"[checkpoint]\nexclude_from_loading = [\"optimizer\"]\n", "checkpoint.exclude_from_loading", "partial"},
  };
  for (const auto& c : cases) {
    INFO(c.toml);
    auto d = config_errors(std::string("[model]\ndim = 64\n") + c.toml);
    REQUIRE(d.size() == 1);
    CHECK(d[0].key == c.key);
    CHECK(d[0].line > 1);  // located in the file
    CHECK_FALSE(d[0].warning);
    CHECK_THAT(d[0].message, Catch::Contains(c.says));
    CHECK_THAT(d[0].message, Catch::Contains("remove it (or set"));
  }
  // The neutral values change nothing: accepted without a word.
  auto ok = load_config_text(
      "[data]\nhf_dataset_name = \"\"\npack_sequences = false\ndatasets = []\n[distributed]\ntp = 1\npp = 1\nep = 1\n"
      "cp = 1\n[checkpoint]\nexclude_from_loading = []\n",
      "t.toml", builtin_registry());
  CHECK(ok.warnings.empty());
  // An override can neutralise a reference config's key.
  LoadOptions o;
  o.overrides = {"--data.hf_dataset_name="};
  CHECK_NOTHROW(load_config(FORGE_SOURCE_DIR "/configs/reference/vlm_debug.toml", builtin_registry(), o));
  CHECK_THAT(forge::test::error_of([] { load_config(FORGE_SOURCE_DIR "/configs/reference/vlm_debug.toml", builtin_registry()); }),
             Catch::Contains("vlm_debug.toml:") && Catch::Contains("[data] hf_dataset_name: got \"sayakpaul"));
}

TEST_CASE("MoE keys: the reference's rules, and archs that do not build MoE layers say so", "[config][moe]") {
  auto cfg = load_config_text("[model]\ndim = 64\nnum_experts = 4\nmoe_top_k = 1\nmoe_frequency = 2\n"
                              "moe_router = \"sigmoid_topk\"\nmoe_expert_ffn_multiplier = 0.5\n",
                              "t.toml", builtin_registry());
  CHECK(cfg.warnings.empty());
  CHECK(cfg.job.model.num_experts == 4);
  CHECK(cfg.job.model.moe_router == "sigmoid_topk");
  auto d = config_errors("[model]\ndim = 64\nnum_experts = 2\nmoe_top_k = 3\n");
  REQUIRE(d.size() == 1);
  CHECK(d[0].key == "model.moe_top_k");
  CHECK_THAT(d[0].message, Catch::Contains("must be <= num_experts = 2"));
  d = config_errors("[model]\ndim = 64\nmoe_router = \"expert_choice\"\n");
  REQUIRE(d.size() == 1);
  CHECK_THAT(d[0].message, Catch::Contains("sigmoid_topk"));
  d = config_errors("[model]\ndim = 64\nmoe_bias_schedule = \"cosine\"\n");
  REQUIRE(d.size() == 1);
  CHECK(d[0].key == "model.moe_bias_schedule");
  std::string mot = tiny_vlm_toml("mot");
  mot.replace(mot.find("[model]\n"), 8, "[model]\nnum_experts = 4\n");
  d = config_errors(mot);
  REQUIRE(d.size() == 1);
  CHECK(d[0].key == "vlm.arch");
  CHECK_THAT(d[0].message, Catch::Contains("num_experts = 0"));
}

TEST_CASE("overrides apply after the file, in TOML syntax, and are validated the same way", "[config]") {
  LoadOptions o;
  o.overrides = {"--model.dim=128", "--model.norm_type=layernorm", "--optimizer.betas=[0.8, 0.9]", "--model.qk_norm"};
  auto cfg = load_config_text("[model]\ndim = 64\nn_heads = 4\n", "t.toml", builtin_registry(), o);
  CHECK(cfg.job.model.dim == 128);
  CHECK(cfg.job.model.norm_type == "layernorm");  // a bare word stays a string
  CHECK(cfg.job.optimizer.betas == std::vector<double>{0.8, 0.9});
  CHECK(cfg.job.model.qk_norm);  // --a.b without a value means true

  LoadOptions bad;
  bad.overrides = {"--model.dim=abc"};
  auto d = config_errors("[model]\ndim = 64\n", bad);
  const auto* e = find_diag(d, "model.dim");
  REQUIRE(e);
  CHECK_THAT(e->file, Catch::Contains("--model.dim=abc"));
  CHECK_THAT(e->message, Catch::Contains("expected an integer"));

  LoadOptions malformed;
  malformed.overrides = {"--nodot=3"};
  auto d2 = config_errors("[model]\ndim = 64\n", malformed);
  REQUIRE(d2.size() == 1);
  CHECK_THAT(d2[0].message, Catch::Contains("--section.key=value"));

  // Nested keys: a table inside a section, merged over the defaults (D3).
  LoadOptions nested;
  nested.overrides = {"--vlm.module_patterns.head=[\"output_head.*\"]"};
  auto cfg2 = load_config_text(tiny_vlm_toml(), "t.toml", builtin_registry(), nested);
  auto pats = cfg2.job.vlm->resolved_module_patterns();
  CHECK(pats.at("head") == std::vector<std::string>{"output_head.*"});
  CHECK(pats.count("vision_encoder") == 1);  // the defaults stay

  // A misspelt section is an error with a suggestion, not a new section.
  LoadOptions typo;
  typo.overrides = {"--trian.max_steps=5"};
  auto d3 = config_errors("[model]\ndim = 64\n", typo);
  REQUIRE(d3.size() == 1);
  CHECK_THAT(d3[0].message, Catch::Contains("unknown section [trian]") && Catch::Contains("did you mean --train.max_steps?"));
}

TEST_CASE("the vlm section dispatches on arch, and an arch override re-dispatches (D11)", "[config][vlm]") {
  auto cfg = load_config_text(tiny_vlm_toml("cross_attention"), "t.toml", builtin_registry());
  REQUIRE(cfg.job.vlm);
  CHECK(cfg.job.vlm->arch == "cross_attention");
  CHECK(cfg.residual_tokens == 0);
  CHECK(cfg.job.vlm->resolved_module_patterns().count("cross_attention") == 1);

  LoadOptions o;
  o.overrides = {"--vlm.arch=mot"};
  auto mot = load_config_text(tiny_vlm_toml("joint_decoder"), "t.toml", builtin_registry(), o);
  CHECK(mot.job.vlm->arch == "mot");
  CHECK(mot.job.vlm->resolved_module_patterns().count("mot") == 1);
  CHECK(mot.residual_tokens == 16);

  // The CA file's own key is then foreign to mot: a clear error, not a silent mix.
  auto d = config_errors(tiny_vlm_toml("cross_attention"), o);
  const auto* e = find_diag(d, "vlm.cross_attention_every_n_layers");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("belongs to arch 'cross_attention'") && Catch::Contains("'mot'"));
}

TEST_CASE("an unknown arch lists the registered ones and the folders searched", "[config][vlm]") {
  auto text = tiny_vlm_toml();
  text.replace(text.find("\"joint_decoder\""), 15, "\"momo\"");
  auto d = config_errors(text);
  const auto* e = find_diag(d, "vlm.arch");
  REQUIRE(e);
  CHECK(e->line > 0);
  CHECK_THAT(e->message, Catch::Contains("no arch plugin named 'momo'") && Catch::Contains("joint_decoder") &&
                             Catch::Contains("Searched:"));
}

TEST_CASE("cross-section checks: sequence budget, missing encoder, seq_len", "[config][vlm]") {
  auto text = tiny_vlm_toml();
  text.replace(text.find("max_seq_len = 64"), 16, "max_seq_len = 20");
  text.replace(text.find("seq_len = 64"), 12, "seq_len = 20");
  auto d = config_errors(text);
  const auto* e = find_diag(d, "model.max_seq_len");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("16 image tokens") && Catch::Contains("max_text_len 12") &&
                             Catch::Contains(">= 28"));

  auto d2 = config_errors("[model]\ndim = 32\nn_heads = 4\n[vlm]\narch = \"joint_decoder\"\n");
  REQUIRE(find_diag(d2, "vlm"));
  CHECK_THAT(find_diag(d2, "vlm")->message, Catch::Contains("[vision_encoder]"));

  auto d3 = config_errors("[model]\nmax_seq_len = 128\n[train]\nseq_len = 256\n");
  REQUIRE(find_diag(d3, "train.seq_len"));
  CHECK_THAT(find_diag(d3, "train.seq_len")->message, Catch::Contains("exceeds model.max_seq_len = 128"));
}

TEST_CASE("adapter token counts are checked at config time", "[config][vlm]") {
  auto text = tiny_vlm_toml("joint_decoder", "avgpool");
  text.replace(text.find("num_tokens = 16"), 15, "num_tokens = 15");
  auto d = config_errors(text);
  const auto* e = find_diag(d, "adapter.pool_window");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("15 encoder tokens do not form a square grid"));

  auto heads = tiny_vlm_toml("joint_decoder", "attentional_pool");
  heads.replace(heads.find("pool_heads = 4"), 14, "pool_heads = 5");
  auto d2 = config_errors(heads);
  REQUIRE(find_diag(d2, "adapter.pool_heads"));
  CHECK_THAT(find_diag(d2, "adapter.pool_heads")->message, Catch::Contains("must divide the encoder's feature width 24"));
}

TEST_CASE("arch rules: cross-attention cadence and heads, MoT modalities", "[config][vlm]") {
  auto ca = tiny_vlm_toml("cross_attention");
  ca.replace(ca.find("cross_attention_every_n_layers = 1"), 34, "cross_attention_every_n_layers = 3\ncross_attention_n_heads = 3");
  auto d = config_errors(ca);
  REQUIRE(find_diag(d, "vlm.cross_attention_every_n_layers"));
  REQUIRE(find_diag(d, "vlm.cross_attention_n_heads"));

  auto mot = tiny_vlm_toml("mot") + "";
  mot.replace(mot.find("max_text_len = 12"), 17, "max_text_len = 12\nmot_modalities = [\"image\", \"audio\"]");
  auto d2 = config_errors(mot);
  REQUIRE(find_diag(d2, "vlm.mot_modalities"));
  CHECK_THAT(find_diag(d2, "vlm.mot_modalities")->message, Catch::Contains("exactly the modalities image and text"));
}

TEST_CASE("freeze schedule start steps must increase, module_patterns merge over defaults (D3)", "[config][vlm]") {
  auto text = tiny_vlm_toml() +
              "";
  text.replace(text.find("max_text_len = 12"), 17,
               "max_text_len = 12\nfreeze_schedule = [{start_step = 5, specs = [{module = \"adapter\"}]}, "
               "{start_step = 5, specs = []}]");
  auto d = config_errors(text);
  REQUIRE(find_diag(d, "vlm.freeze_schedule"));

  auto ok = tiny_vlm_toml();
  ok.replace(ok.find("max_text_len = 12"), 17,
             "max_text_len = 12\nmodule_patterns = { head = [\"transformer.output_head.*\"] }");
  auto cfg = load_config_text(ok, "t.toml", builtin_registry());
  auto pats = cfg.job.vlm->resolved_module_patterns();
  CHECK(pats.at("head") == std::vector<std::string>{"transformer.output_head.*"});
  CHECK(pats.count("transformer") == 1);  // the defaults stay
  CHECK(pats.count("vision_encoder") == 1);
}

TEST_CASE("the resolved config round-trips through TOML", "[config]") {
  for (const char* arch : {"joint_decoder", "cross_attention", "mot"}) {
    auto text = tiny_vlm_toml(arch, "attentional_pool");
    text.replace(text.find("max_text_len = 12"), 17,
                 "max_text_len = 12\nfreeze = [{module = \"vision_encoder\", frozen = true}, {module = \"adapter\", "
                 "frozen = false}]\nfreeze_schedule = [{start_step = 3, specs = [{module = \"transformer.norm.*\"}]}]");
    auto first = load_config_text(text, "t.toml", builtin_registry());
    std::string toml1 = to_toml(first.job);
    auto second = load_config_text(toml1, "resolved.toml", builtin_registry());
    CHECK(to_toml(second.job) == toml1);
    CHECK(second.job.vlm->freeze_schedule.size() == 1);
    CHECK(second.job.vlm->freeze.size() == 2);
  }
}

TEST_CASE("D6: the image size comes from the encoder, a disagreeing config is rejected", "[config][vlm]") {
  LoadOptions o;
  o.plugin_paths = {FORGE_FIXTURE_PLUGIN_DIR};
  Registry reg;
  const std::string base =
      "[model]\ndim = 32\nn_layers = 1\nn_heads = 4\nvocab_size = 64\nmax_seq_len = 64\n"
      "[vision_encoder]\ntype = \"fixture_good\"\n[vlm]\nmax_text_len = 8\n[train]\nseq_len = 64\n";
  auto cfg = load_config_text(base, "t.toml", reg, o);
  CHECK(cfg.job.data.hf_image_size == 32);  // taken from the encoder
  try {
    load_config_text(base + "[data]\nhf_image_size = 224\n", "t.toml", reg, o);
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    const auto* d = find_diag(e.diagnostics(), "data.hf_image_size");
    REQUIRE(d);
    CHECK(d->line == 14);  // the hf_image_size line
    CHECK_THAT(d->message, Catch::Contains("224x224") && Catch::Contains("32x32"));
  }
}

TEST_CASE("a missing config file is a clear error", "[config]") {
  try {
    load_config("/nonexistent/forge.toml", builtin_registry());
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("/nonexistent/forge.toml") && Catch::Contains("not found"));
    CHECK(e.exit_code() == 2);
  }
}

TEST_CASE("[video]: its keys, the clip's token budget, and what a video job cannot have", "[config][video]") {
  auto vlm = [](const std::string& video) {
    auto t = tiny_vlm_toml();
    return t.replace(t.find("[train]"), 7, "[video]\n" + video + "[train]");
  };
  // 2 frames x ceil(4 / 3)^2 tokens per frame (16 encoder tokens pooled 3 x 3).
  auto ok = load_config_text(vlm("data_root = \"clips\"\nmax_frames = 2\nmin_frames = 1\n"), "t.toml", builtin_registry());
  REQUIRE(ok.job.video);
  CHECK(ok.job.video->pool_window == 3);
  CHECK(ok.job.video->dataset_type == "webvid");
  CHECK(ok.visual_tokens == 2 * 4);
  CHECK(ok.job.data.hf_image_size == 224);  // frames at video.frame_size
  CHECK(to_toml(ok.job).find("[video]\ndata_root = \"clips\"") != std::string::npos);

  struct Case {
    std::string toml;
    const char* key;
    const char* says;
  };
  const Case cases[] = {
      {"[model]\ndim = 64\n[video]\ndata_root = \"x\"\n", "video", "needs [vlm]"},
      {vlm("data_root = \"x\"\nmax_frames = 2\nmin_frames = 3\n"), "video.min_frames", "exceeds max_frames = 2"},
      {vlm("max_frames = 2\nmin_frames = 1\n"), "video.data_root", "needs data_root"},
      {vlm("data_root = \"x\"\nmax_frames = 2\nmin_frames = 1\ndatasets = [\"a\"]\n"), "video.datasets", "mixtures"},
      {vlm("data_root = \"x\"\nmax_frames = 2\nmin_frames = 1\n") + "[data]\ntype = \"jsonl\"\npath = \"m.jsonl\"\n",
       "data.type", "reads its clips from [video]"},
      {vlm("data_root = \"x\"\nmin_frames = 1\n"), "model.max_seq_len",
       "video.max_frames 16 x 4 per frame at video.pool_window 3"},
      {vlm("data_root = \"x\"\ndataset_type = \"hf\"\n"), "video.dataset_type", "\"webvid\", \"jsonl\""},
  };
  for (const auto& c : cases) {
    INFO(c.toml);
    auto d = config_errors(c.toml);
    const auto* e = find_diag(d, c.key);
    REQUIRE(e);
    CHECK_THAT(e->message, Catch::Contains(c.says));
  }
}
