// forge train, forge generate, forge eval, forge data sample, forge data check.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "apps/forge/commands.h"
#include "core/data/job_tokenizer.h"
#include "core/checkpoint/checkpoint.h"
#include "core/config/loader.h"
#include "core/data/datasets.h"
#include "core/data/jsonl.h"
#include "core/data/loader.h"
#include "core/data/shapes.h"
#include "core/data/video.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "core/training/caption_eval.h"
#include "core/training/eval.h"
#include "core/training/run_files.h"
#include "core/training/trainer.h"
#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/logging.h"
#include "forge/safetensors.h"

namespace fs = std::filesystem;

namespace forge::app {

namespace {

// A trained model from a checkpoint folder (a run folder or one step_<N>).
struct Restored {
  std::string step_dir;
  LoadedConfig cfg;
  VLM model{nullptr};
  at::Device device{at::kCPU};
};

// Rebuilds a checkpoint's model on `device` ("auto", "cpu" or "cuda"): a
// checkpoint trained on a GPU runs on a CPU and the reverse.
Restored restore(const std::string& dir, const std::string& device, const std::vector<std::string>& plugin_paths) {
  Restored r;
  r.step_dir = resolve_checkpoint(dir);
  if (r.step_dir.empty())
    throw UserError(fmt::format("no forge checkpoint in \"{}\" (expected a run folder with step_<N>/ or latest, or a "
                                "step folder holding train_state.json)",
                                dir));
  LoadOptions opts;
  opts.plugin_paths = plugin_paths;
  r.cfg = load_config((fs::path(r.step_dir) / "config.toml").string(), Registry::global(), opts);
  r.model = build_vlm(r.cfg.job, Registry::global());
  load_checkpoint_weights(r.step_dir, *r.model);
  r.device = pick_device(device);
  r.model->to(r.device);
  r.model->eval();
  return r;
}

// One image file as the model's encoder takes it: (1, 3, S, S).
at::Tensor image_pixels(VLMImpl& model, const JobConfig& job, const std::string& path) {
  return preprocess_image(read_image(path), model.vision_encoder->preprocess(), job.data.hf_image_size).unsqueeze(0);
}

}  // namespace

int cmd_train(const ConfigArgs& args) {
  LoadedConfig cfg = load_job(args);
  TrainSummary s = train(cfg, Registry::global());
  if (const char* rank = std::getenv("RANK"); rank && std::string(rank) != "0") return kExitOk;  // rank 0 reports
  std::cout << fmt::format("\ntrained steps {}..{} in {}{}{}\n", s.start_step, s.end_step, util::human_duration(s.seconds),
                           s.resumed ? " (resumed)" : "", s.interrupted ? " (stopped early by a signal)" : "");
  if (!s.losses.empty()) std::cout << fmt::format("last loss {:.4f}\n", s.losses.back());
  if (s.final_eval) {
    const EvalResult& e = *s.final_eval;
    std::cout << fmt::format("held-out: loss {:.4f}, token accuracy {:.3f}", e.loss, e.token_accuracy);
    if (e.words > 0) {
      std::cout << fmt::format(", image-word accuracy {:.3f}", e.word_accuracy);
      if (s.chance_word_accuracy > 0) std::cout << fmt::format(" (chance {:.3f})", s.chance_word_accuracy);
      std::cout << "\n  by kind:";
      for (const auto& [k, v] : e.by_kind) std::cout << fmt::format(" {} {:.3f} ({} words)", k, e.kind_accuracy(k), v.second);
    }
    std::cout << "\n";
  }
  if (s.final_captions) {
    const CaptionScores& c = s.final_captions->scores;
    std::cout << fmt::format("generated captions ({}): BLEU-4 {:.4f}, CIDEr-D {:.4f}, exact match {:.3f}\n", c.captions,
                             c.bleu4(), c.cider_d, c.exact_match);
  }
  if (!s.tensorboard_dir.empty()) std::cout << fmt::format("TensorBoard: tensorboard --logdir {}\n", s.tensorboard_dir);
  if (!s.report_path.empty()) std::cout << fmt::format("report: {}\n", s.report_path);
  if (!s.last_checkpoint.empty()) {
    std::cout << fmt::format("checkpoint: {}\n", s.last_checkpoint);
    const JobConfig& job = cfg.job;
    const bool generates = job.vlm &&
                           Registry::global().arch(job.vlm->arch)->make_hooks(job.model, *job.vlm, 0)->generation_refusal().empty();
    if (generates && job.video)
      std::cout << fmt::format("caption a clip: forge generate --checkpoint {} --video <clip.mp4>\n", job.checkpoint.dir);
    else if (generates)
      std::cout << fmt::format("caption an image: forge generate --checkpoint {} --image <file.png>\n", job.checkpoint.dir);
    else
      std::cout << fmt::format("evaluate it: forge eval --checkpoint {}\n", job.checkpoint.dir);
  }
  return kExitOk;
}

int cmd_generate(const GenerateArgs& a) {
  if (a.temperature != 0.0 && a.temperature < 1e-3)
    throw UsageError(fmt::format("--temperature {} is too small to sample with; use 0 for greedy decoding or a value "
                                 ">= 0.001",
                                 a.temperature));
  if (!(a.top_p > 0.0 && a.top_p <= 1.0))
    throw UsageError(fmt::format("--top-p {} must be in (0, 1]; 1 turns nucleus sampling off", a.top_p));
  if (a.temperature == 0.0 && (a.top_k > 0 || a.top_p < 1.0))
    log()->warn("--top-k/--top-p only act when sampling; with --temperature 0 decoding is greedy");
  if (a.image.empty() && a.video.empty())
    throw UsageError("one of --image FILE (an image model) and --video FILE (a video model) is required: what to "
                     "caption");
  Restored r = restore(a.checkpoint, a.device, a.plugin_paths);
  const JobConfig& job = r.cfg.job;
  VLM& model = r.model;
  if (job.train.threads > 0) at::set_num_threads(static_cast<int>(job.train.threads));  // as the run did
  if (std::string why = model->transformer->hooks().generation_refusal(); !why.empty())
    throw UserError(fmt::format("{}: {}", a.checkpoint, why));
  at::Tensor px, frame_mask;
  if (model->video()) {
    if (a.video.empty())
      throw UsageError(fmt::format("{} is a video model ([video], {} frames a clip): caption a clip with --video FILE",
                                   a.checkpoint, model->frames_per_clip()));
    const VideoConfig& v = *job.video;
    Clip clip = decode_clip(a.video, FrameSampling{v.fps, v.min_frames, v.max_frames});
    auto [pixels, mask] = clip_pixels(clip.frames, model->frames_per_clip(), model->vision_encoder->preprocess(),
                                      job.data.hf_image_size, a.video);
    px = pixels.unsqueeze(0);
    frame_mask = mask.unsqueeze(0).to(r.device);
    log()->info("{}: {} of {} frames taken ({:.1f} s clip)", a.video, std::min(clip.frames.size(),
                static_cast<size_t>(model->frames_per_clip())), model->frames_per_clip(), clip.duration);
  } else {
    if (!a.video.empty())
      throw UsageError(fmt::format("--video: {} is an image model; caption an image with --image FILE", a.checkpoint));
    px = image_pixels(*model, job, a.image);
  }
  auto tokenizer = make_tokenizer(job.data);
  Example ex;
  ex.prompt = a.prompt;
  const std::vector<int64_t> ids = make_collator(job, tokenizer, *model)->prompt_ids(ex);
  at::Tensor prompt = at::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});
  GenerateOptions o;
  const int64_t room = job.model.max_seq_len - model->residual_image_tokens() - prompt.size(1);
  if (room <= 0)
    throw UserError(fmt::format("--prompt is {} tokens; with {} image tokens in the residual stream nothing fits in "
                                "model.max_seq_len = {}. Shorten the prompt",
                                prompt.size(1), model->residual_image_tokens(), job.model.max_seq_len));
  o.max_new_tokens = a.max_new_tokens > 0 ? a.max_new_tokens : job.vlm->max_text_len;
  if (o.max_new_tokens > room)
    log()->warn("--max-new-tokens {} capped at {}: model.max_seq_len = {} holds {} image and {} prompt tokens",
                o.max_new_tokens, room, job.model.max_seq_len, model->residual_image_tokens(), prompt.size(1));
  o.max_new_tokens = std::min(o.max_new_tokens, room);
  o.temperature = a.temperature;
  o.top_k = a.top_k;
  o.top_p = a.top_p;
  o.eos_id = tokenizer->eos_id();
  o.seed = a.seed;
  const auto t0 = std::chrono::steady_clock::now();
  at::Tensor out;
  {
    AutocastScope autocast(resolve_precision(job.train.mixed_precision, r.device));  // the precision it trained in
    out = generate(*model, px.to(r.device), prompt.to(r.device), o, frame_mask).to(at::kCPU);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<int64_t> gen(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
  std::cout << tokenizer->decode(gen) << std::endl;
  log()->info("{} tokens in {:.3f}s from {} ({} image tokens {})", gen.size(), secs, r.step_dir,
              model->visual_tokens(), model->residual_image_tokens() > 0 ? "prefilled once" : "through cross-attention");
  return kExitOk;
}

int cmd_activations(const ActivationsArgs& a) {
  Restored r = restore(a.checkpoint, a.device, a.plugin_paths);
  const JobConfig& job = r.cfg.job;
  VLM& model = r.model;
  const int64_t L = job.model.n_layers;
  std::set<int64_t> layers(a.layers.begin(), a.layers.end());
  if (layers.empty())
    for (int64_t i = 0; i < L; ++i) layers.insert(i);
  for (int64_t i : layers)
    if (i < 0 || i >= L)
      throw UsageError(fmt::format("--layers {}: the decoder has layers 0..{}", i, L - 1));
  at::Tensor px = image_pixels(*model, job, a.image);
  auto tokenizer = make_tokenizer(job.data);
  // The sample as training lays it out ([BOS] prompt text EOS), without padding.
  Example ex;
  ex.prompt = a.prompt;
  ex.text = a.text;
  auto [ids, masked] = make_collator(job, tokenizer, *model)->tokens_of(ex);
  if (static_cast<int64_t>(ids.size()) > job.vlm->max_text_len) {
    log()->warn("--text is {} tokens; cut to vlm.max_text_len = {}", ids.size(), job.vlm->max_text_len);
    ids.resize(static_cast<size_t>(job.vlm->max_text_len));
  }
  at::Tensor input = at::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});
  model->transformer->set_capture(layers, a.attention);
  {
    torch::NoGradGuard no_grad;
    model->forward(px.to(r.device), input.to(r.device));
  }
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [i, h] : model->transformer->captured())
    out.emplace_back(fmt::format("layers.{}", i), h.squeeze(0).to(at::kCPU, at::kFloat).contiguous());
  for (const auto& [i, p] : model->transformer->captured_attention())
    out.emplace_back(fmt::format("attention.{}", i), p.squeeze(0).to(at::kCPU, at::kFloat).contiguous());
  if (a.attention && model->transformer->captured_attention().size() < layers.size())
    log()->warn("--attention: {} of the {} layer(s) have no standard attention module (the {} arch's own), so no "
                "attention.<i> for them",
                layers.size() - model->transformer->captured_attention().size(), layers.size(), job.vlm->arch);
  out.emplace_back("input_ids", input.squeeze(0));
  const int64_t N = model->residual_image_tokens();
  std::map<std::string, std::string> meta{{"checkpoint", r.step_dir},
                                          {"image", a.image},
                                          {"image_positions", std::to_string(N)},
                                          {"text_positions", std::to_string(input.size(1))},
                                          {"arch", job.vlm->arch},
                                          {"layout", N > 0 ? "[image tokens][text tokens]" : "[text tokens]"}};
  safetensors::save(a.out, out, meta);
  std::cout << fmt::format("{}: the residual stream after {} layer(s), each ({} positions, {} dims): {} image then {} "
                           "text positions{}\n",
                           a.out, layers.size(), N + input.size(1), job.model.dim, N, input.size(1),
                           a.attention ? fmt::format("; attention probabilities of {} layer(s)",
                                                     model->transformer->captured_attention().size())
                                       : std::string());
  return kExitOk;
}

namespace {

// forge eval's generated captions: the scores, each caption, and the JSONL
// file when asked for (written whole, or not at all).
void report_captions(const CaptionEval& c, const std::string& out) {
  if (c.samples.empty()) {
    const std::string why = c.skipped_why.empty() ? "none asked for (--captions 0)" : c.skipped_why;
    if (!out.empty()) throw UserError(fmt::format("--captions-out {}: no captions to write: {}", out, why));
    std::cout << fmt::format("no generated captions: {}\n", why);
    return;
  }
  std::cout << fmt::format("generated captions ({}, {:.1f}s): BLEU-4 {:.4f}, CIDEr-D {:.4f}, exact match {:.3f}\n",
                           c.scores.captions, c.seconds, c.scores.bleu4(), c.scores.cider_d, c.scores.exact_match);
  std::string jsonl;
  for (const auto& s : c.samples) {
    std::cout << fmt::format("  {}: \"{}\" (reference \"{}\")\n", s.source, s.generated, s.reference);
    nlohmann::json row{{"index", s.index}, {"source", s.source}, {"reference", s.reference},
                       {"generated", s.generated}};
    if (!s.more_references.empty()) row["more_references"] = s.more_references;
    jsonl += row.dump() + "\n";
  }
  if (!out.empty()) {
    replace_file(out, jsonl);
    std::cout << fmt::format("captions: {}\n", out);
  }
}

}  // namespace

int cmd_eval(const EvalArgs& a) {
  Restored r = restore(a.checkpoint, a.device, a.plugin_paths);
  const JobConfig& job = r.cfg.job;
  const int64_t samples = a.captions >= 0 ? a.captions : job.eval.caption_samples;
  if (samples == 0 && !a.captions_out.empty())
    throw UsageError(fmt::format("--captions-out {}: no captions to write: {}", a.captions_out,
                                 a.captions == 0 ? "--captions is 0"
                                                 : "the checkpoint's eval.caption_samples is 0; pass --captions N"));
  if (job.train.threads > 0) at::set_num_threads(static_cast<int>(job.train.threads));  // as the run did
  auto held = make_dataset(job, "heldout");
  if (!held)
    throw UserError(job.video ? "the checkpoint's [video] data_root has no validation split (validation.jsonl, or "
                                "WebVid's data/val partitions)"
                              : "the checkpoint's config has no held-out data (eval.dataset_path)");
  auto collator = make_collator(job, make_tokenizer(job.data), *r.model);
  LoaderOptions lo;
  lo.batch_size = job.train.batch_size;
  lo.shuffle = false;
  lo.workers = 1;
  lo.skip_bad = job.data.bad_rows == "skip";
  lo.frames = job.video ? job.video->max_frames : 0;
  DataLoader loader(held, collator, r.model->vision_encoder->preprocess(), job.data.hf_image_size, lo);
  const Precision precision = resolve_precision(job.train.mixed_precision, r.device);
  EvalResult e = evaluate(*r.model, loader, a.batches > 0 ? a.batches : job.eval.steps, r.device, precision);
  std::cout << fmt::format("{}: {} batches of {}\nloss {:.4f}\ntoken accuracy {:.4f}\n", r.step_dir, e.batches,
                           lo.batch_size, e.loss, e.token_accuracy);
  if (e.words > 0) {
    std::cout << fmt::format("image-word accuracy {:.4f} over {} words", e.word_accuracy, e.words);
    if (job.data.type == "shapes") std::cout << fmt::format(" (chance {:.3f})", ShapesDataset::chance_accuracy());
    std::cout << "\n";
    for (const auto& [k, v] : e.by_kind)
      std::cout << fmt::format("  {:<9} {:.4f} ({} words)\n", k, e.kind_accuracy(k), v.second);
  }
  if (samples > 0) {
    CaptionEvalOptions o{samples, job.model.max_seq_len, r.device, precision};
    o.batch_size = lo.batch_size;
    report_captions(caption_eval(*r.model, loader, o), a.captions_out);
  }
  return kExitOk;
}

int cmd_data_sample(const DataSampleArgs& a) {
  JobConfig job;
  if (!a.config.config.empty()) {
    job = load_job(a.config).job;
  } else {
    // No config: the embedded dataset at 48 px, with any key=value overrides applied to the defaults.
    LoadOptions opts;
    opts.overrides = {"--data.hf_image_size=48"};
    opts.overrides.insert(opts.overrides.end(), a.config.overrides.begin(), a.config.overrides.end());
    opts.plugin_paths = a.config.plugin_paths;
    LoadedConfig cfg = load_config_text("", "(no config file)", Registry::global(), opts);
    print_warnings(cfg);
    job = cfg.job;
  }
  if (a.image_size > 0) job.data.hf_image_size = a.image_size;
  auto ds = make_dataset(job, a.split == "train" ? "train" : "heldout");
  if (!ds) throw UserError("the config has no held-out data (eval.dataset_path)");
  std::error_code ec;
  fs::create_directories(a.out, ec);
  if (ec) throw UserError(fmt::format("--out {}: cannot create it: {}", a.out, ec.message()));
  std::ofstream manifest(fs::path(a.out) / "manifest.jsonl");
  const int64_t n = std::min<int64_t>(a.count, static_cast<int64_t>(ds->size()));
  for (int64_t i = 0; i < n; ++i) {
    Example ex = ds->get(static_cast<size_t>(i));
    std::string name = fmt::format("{}_{:06d}.png", a.split, i);
    nlohmann::json row{{"text", ex.text}};
    if (ex.frames.empty()) {
      write_png((fs::path(a.out) / name).string(), ex.image);
      row["image"] = name;
    } else {  // a clip: its sampled frames, one PNG each
      std::vector<std::string> frames;
      for (size_t f = 0; f < ex.frames.size(); ++f) {
        frames.push_back(fmt::format("{}_{:06d}_frame{:02d}.png", a.split, i, f));
        write_png((fs::path(a.out) / frames.back()).string(), ex.frames[f]);
      }
      row["frames"] = frames;
      name = fmt::format("{} ({} frames)", frames.front(), frames.size());
    }
    if (!ex.prompt.empty()) row["prompt"] = ex.prompt;
    manifest << row.dump() << "\n";
    if (i < 5) std::cout << fmt::format("{}  {}\n", name, ex.text);
  }
  std::cout << fmt::format("wrote {} samples of {} to {} (captions in {}/manifest.jsonl{})\n", n, ds->describe(),
                           a.out, a.out, job.video ? "" : ", usable as data.type = \"jsonl\"");
  return kExitOk;
}

int cmd_data_check(const ConfigArgs& args) {
  LoadedConfig cfg = load_job(args);
  JobConfig job = cfg.job;
  job.data.bad_rows = "skip";  // count every bad row instead of stopping at the first
  for (const char* split : {"train", "heldout"}) {
    std::shared_ptr<Dataset> ds;
    try {
      ds = make_dataset(job, split);
    } catch (const UserError& e) {
      std::cout << fmt::format("{}: {}\n", split, e.what());
      continue;
    }
    if (!ds) continue;
    const auto t0 = std::chrono::steady_clock::now();
    std::map<std::string, int64_t> bad;
    if (auto* j = dynamic_cast<JsonlDataset*>(ds.get())) bad = j->bad_rows();  // same library: core
    int64_t ok = 0, pixels = 0;
    Preprocess prep;
    for (size_t i = 0; i < ds->size(); ++i) {
      try {
        Example ex = ds->get(i);
        if (ex.frames.empty()) ex.frames.push_back(std::move(ex.image));
        for (const Image& im : ex.frames) {
          pixels += static_cast<int64_t>(im.width) * im.height;
          preprocess_image(im, prep, job.data.hf_image_size);
        }
        ++ok;
      } catch (const FormatError& e) {
        ++bad[job.video ? "undecodable video" : "undecodable image"];
        std::cout << "  " << e.what() << "\n";
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t nbad = 0;
    for (const auto& [k, v] : bad) nbad += v;
    std::cout << fmt::format("{}: {}\n  rows scanned {}, usable {}, bad {}\n", split, ds->describe(), ok + nbad, ok,
                             nbad);
    for (const auto& [k, v] : bad) std::cout << fmt::format("    {:<18} {}\n", k, v);
    const char* unit = job.video ? "clips" : "images";
    std::cout << fmt::format("  decoded and preprocessed {} {} in {:.2f}s: {:.0f} {}/s ({:.1f} Mpixel/s, "
                             "1 thread)\n",
                             ok, unit, secs, ok / std::max(secs, 1e-9), unit, pixels / 1e6 / std::max(secs, 1e-9));
  }
  return kExitOk;
}

}  // namespace forge::app
