// forge bench: the training step of a config's model on synthetic batches of
// its shape, timed after a warm-up, with the FLOP/s, MFU and the machine's
// GEMM ceiling beside it. `--data-only` times the data path instead.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <ATen/CPUGeneratorImpl.h>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "apps/forge/commands.h"
#include "core/config/loader.h"
#include "core/data/datasets.h"
#include "core/data/job_tokenizer.h"
#include "core/data/loader.h"
#include "core/distributed/data_parallel.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "core/training/bench_probe.h"
#include "core/training/optim.h"
#include "core/training/step.h"
#include "core/training/trainer.h"
#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/logging.h"

namespace fs = std::filesystem;

namespace forge::app {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

void write_result(const BenchArgs& a, const nlohmann::json& j) {
  std::cout << "\n" << j.dump(2) << "\n";
  if (a.out.empty()) return;
  if (fs::path(a.out).has_parent_path()) fs::create_directories(fs::path(a.out).parent_path());
  const std::string tmp = a.out + ".tmp";
  {
    std::ofstream f(tmp);
    f << j.dump(2) << "\n";
    if (!f.flush()) throw RuntimeError(fmt::format("cannot write {}", tmp));
  }
  fs::rename(tmp, a.out);
  std::cout << "result written to " << a.out << "\n";
}

// Samples/s of the configured data path: dataset, decode, preprocess, tokenise, collate.
int bench_data(const BenchArgs& a, const LoadedConfig& cfg) {
  const JobConfig& job = cfg.job;
  auto logger = log();
  VLM model = build_vlm(job, Registry::global());  // the encoder's preprocessing and the residual layout
  auto collator = make_collator(job, make_tokenizer(job.data), *model);
  const LoaderOptions lo = train_loader_options(job, at::Device(at::kCPU));  // one rank; batches stay unpinned
  auto ds = make_dataset(job, "train");
  DataLoader loader(ds, collator, model->vision_encoder->preprocess(), job.data.hf_image_size, lo);
  logger->info("data: {}; {} worker thread(s), batches of {}", ds->describe(), lo.workers, lo.batch_size);
  for (int64_t i = 0; i < a.warmup; ++i) loader.next();
  std::vector<double> times;
  for (int64_t i = 0; i < a.steps; ++i) {
    const auto t0 = Clock::now();
    loader.next();
    times.push_back(since(t0));
  }
  double total = 0;
  for (double t : times) total += t;
  const double rate = static_cast<double>(a.steps * lo.batch_size) / total;
  std::cout << fmt::format("data path: {:.1f} samples/s ({} batches of {}, {} worker thread(s))\n", rate, a.steps,
                           lo.batch_size, lo.workers);
  write_result(a, nlohmann::json{{"kind", "data"},
                                 {"config", job.source},
                                 {"label", a.label},
                                 {"dataset", ds->describe()},
                                 {"batch_size", lo.batch_size},
                                 {"workers", lo.workers},
                                 {"batches", a.steps},
                                 {"samples_per_s", rate},
                                 {"batch_time_median_s", quantile(times, 0.5)},
                                 {"versions", runtime_versions(at::Device(at::kCPU))}});
  return kExitOk;
}

// The text positions of a sample that are loss targets under --targets: the first ones, as a caption's tokens
// before its padding.
int64_t target_positions(const BenchArgs& a, int64_t T) {
  return std::clamp<int64_t>(std::llround(a.targets * static_cast<double>(T)), 1, T);
}

// A fixed synthetic batch of the configured shape: uniform pixels, random token ids, each sample's first
// target_positions tokens targets and the rest -100.
Batch synthetic_batch(const JobConfig& job, VLMImpl& model, const BenchArgs& a) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(job.train.seed));
  const Preprocess prep = model.vision_encoder->preprocess();
  const int64_t side = prep.image_size > 0 ? prep.image_size : (job.data.hf_image_size > 0 ? job.data.hf_image_size : 32);
  const int64_t B = job.train.batch_size, T = job.vlm->max_text_len;
  Batch b;
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  // A video model takes whole clips, every frame real.
  b.pixel_values = model.video() ? at::rand({B, model.frames_per_clip(), 3, side, side}, gen, opts)
                                 : at::rand({B, 3, side, side}, gen, opts);
  if (model.video()) b.frame_mask = at::ones({B, model.frames_per_clip()}, at::kBool);
  b.input_ids = at::randint(0, job.model.vocab_size, {B, T}, gen, at::TensorOptions().dtype(at::kLong));
  b.labels = b.input_ids.clone();
  const int64_t targets = target_positions(a, T);
  b.labels.narrow(1, targets, T - targets).fill_(-100);
  return b;
}

}  // namespace

int cmd_bench(const BenchArgs& a) {
  LoadedConfig cfg = load_job(a.config);
  const JobConfig& job = cfg.job;
  if (!job.is_vlm()) throw UserError(fmt::format("{}: forge bench needs a [vlm] section", job.source));
  if (a.data_only) return bench_data(a, cfg);
  auto logger = log();
  const at::Device device = pick_device(job.train.device);
  if (job.train.threads > 0) at::set_num_threads(static_cast<int>(job.train.threads));
  const Precision precision = resolve_precision(job.train.mixed_precision, device);
  logger->info("device {}, {} CPU threads; precision: {} ({})", device.str(), at::get_num_threads(),
               precision.describe(), precision.reason);

  VLM model = build_vlm(job, Registry::global());
  model->set_activation_checkpointing(activation_checkpointing_every(job.train));
  const VLMConfig& vlm = *job.vlm;
  apply_freeze(*model, effective_freeze(0, vlm.freeze, vlm.freeze_schedule), vlm.resolved_module_patterns());
  std::set<std::string> trainable;
  for (const auto& p : model->named_parameters(true))
    if (p.value().requires_grad()) trainable.insert(p.key());
  auto dist = Distributed::from_env(job.distributed, device);
  DataParallel dp(job.distributed, *dist);
  dp.attach(*model, device, precision.compute_dtype());
  const ParamGroups groups = dp.optimizer_groups(make_param_groups(*model, trainable, job.optimizer.decay_embeddings));
  auto optimizer = make_adamw(groups, job.optimizer);
  model->train();
  if (model->encoder_frozen()) model->vision_encoder->eval();

  Batch batch = synthetic_batch(job, *model, a);
  if (device.is_cuda()) {  // as the trainer's loader with data.pin_memory: each step's copy to the GPU is async
    batch.pixel_values = batch.pixel_values.pin_memory();
    batch.input_ids = batch.input_ids.pin_memory();
    batch.labels = batch.labels.pin_memory();
  }
  StepParts parts{*model, dp, *dist, groups, precision, device, job.train.z_loss_weight, job.train.grad_clip_norm};
  const int64_t accum = job.train.grad_accum_steps;
  std::vector<double> step_s, optim_s;
  double loss = 0;
  reset_peak_memory(device);
  logger->info("{} warm-up and {} timed steps of batch {} x {} micro-batch(es)", a.warmup, a.steps,
               job.train.batch_size, accum);
  auto gradients = [&] {  // the trainer's step up to the update
    optimizer->zero_grad(true);
    dp.begin_step();
    return compute_gradients(parts, accum, [&] { return batch; });
  };
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    device_sync(device);
    const auto t0 = Clock::now();
    const StepStats st = gradients();
    device_sync(device);
    const auto t1 = Clock::now();
    optimizer_step(*optimizer, st.grad_scale);
    finish_step(*model, true);
    device_sync(device);
    if (s >= a.warmup) {
      step_s.push_back(since(t0));
      optim_s.push_back(since(t1));
    }
    loss = st.loss;
  }
  const double peak_bytes = peak_memory_bytes(device);
  if (!a.profile.empty()) {  // one more step under the Kineto profiler, as a Chrome trace
    namespace prof = torch::profiler::impl;
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
    const prof::ProfilerConfig pc(device.is_cuda() ? prof::ProfilerState::KINETO_GPU_FALLBACK
                                                   : prof::ProfilerState::KINETO,
                                  /*report_input_shapes=*/true, /*profile_memory=*/false);
    torch::autograd::profiler::prepareProfiler(pc, activities);
    torch::autograd::profiler::enableProfiler(pc, activities);
    const StepStats st = gradients();
    optimizer_step(*optimizer, st.grad_scale);
    finish_step(*model, true);
    device_sync(device);
    torch::autograd::profiler::disableProfiler()->save(a.profile);
    std::cout << "profile of one step written to " << a.profile << " (chrome://tracing, or "
              << "python bench/profile_summary.py " << a.profile << ")\n";
  }

  const ModelConfig& m = job.model;
  const int64_t B = job.train.batch_size * accum * dist->world(), T = vlm.max_text_len;
  const int64_t residual = model->residual_image_tokens() + T;
  const double median = quantile(step_s, 0.5), p90 = quantile(step_s, 0.9);
  // D12 counts the FLOPs trained: the head's only at the positions that are targets (the loss skips the rest).
  const int64_t targets = target_positions(a, T);
  const double flops = train_step_flops(*model, B, T, B * targets);
  const double achieved = flops / median;
  const double peak = peak_flops(job.metrics, device);
  const at::ScalarType dtype = precision.compute_dtype();
  std::vector<GemmRate> gemms{
      measure_gemm("MLP up-projection (batch x residual, dim -> ffn)", job.train.batch_size * residual, m.dim,
                   m.ffn_hidden(), dtype, device),
      measure_gemm("output head (batch x text, dim -> vocab)", job.train.batch_size * T, m.dim, m.vocab_size, dtype,
                   device)};
  double gemm_best = 0;
  nlohmann::json gemm_json = nlohmann::json::array();
  for (const auto& g : gemms) {
    gemm_best = std::max(gemm_best, g.flops_per_s);
    gemm_json.push_back({{"what", g.what}, {"m", g.m}, {"k", g.k}, {"n", g.n}, {"flops_per_s", g.flops_per_s}});
  }
  const std::string attention =
      sdpa_backend(job.train.batch_size, m.n_heads, m.kv_heads(), residual, m.head_dim(), dtype, device);
  double params = 0;
  for (const auto& [k, p] : nn::unique_named_parameters(*model)) params += static_cast<double>(p.numel());
  if (dp.sharded()) params = static_cast<double>(dp.fsdp()->total_numel());

  std::cout << fmt::format(
      "\n{} ({}, {}), {} parameters, batch {} x ({} image + {} text positions, {} of them targets)\n"
      "step time      median {:.4f} s, p90 {:.4f} s ({} timed steps after {} warm-up); optimizer {:.4f} s ({:.1f} %)\n"
      "throughput     {} residual tokens/s, {} text tokens/s\n"
      "compute        {:.3e} FLOP per step = 3 x decoder forward + tower + adapter (D12) -> {:.3e} FLOP/s\n"
      "               MFU {:.2f} % of {:.3e} peak FLOP/s; {:.1f} % of this machine's measured {} GEMM rate "
      "{:.3e} FLOP/s\n"
      "memory         peak {} ({})\n"
      "attention      {}\n"
      "loss           {:.4f} (last step; synthetic data)\n",
      job.source, vlm.arch, precision.describe(), util::human_count(params), B, model->residual_image_tokens(), T,
      targets, median, p90, a.steps, a.warmup, quantile(optim_s, 0.5), 100 * quantile(optim_s, 0.5) / median,
      util::human_count(static_cast<double>(B * residual) / median),
      util::human_count(static_cast<double>(B * T) / median), flops, achieved, 100 * achieved / peak, peak,
      100 * achieved / gemm_best, c10::toString(dtype), gemm_best, util::human_bytes(peak_bytes),
      device.is_cuda() ? "CUDA caching allocator" : "process peak RSS", attention, loss);
  nlohmann::json j{{"kind", "train_step"},
                   {"config", job.source},
                   {"label", a.label},
                   {"arch", vlm.arch},
                   {"device", device.str()},
                   {"precision", precision.bf16 ? "bf16" : "fp32"},
                   {"precision_reason", precision.reason},
                   {"activation_checkpointing", job.train.activation_checkpointing},
                   {"parameters", params},
                   {"batch_size", B},
                   {"image_positions", model->residual_image_tokens()},
                   {"text_tokens", T},
                   {"target_positions", targets},
                   {"warmup_steps", a.warmup},
                   {"timed_steps", a.steps},
                   {"step_time_median_s", median},
                   {"step_time_p90_s", p90},
                   {"step_times_s", step_s},
                   {"optimizer_time_median_s", quantile(optim_s, 0.5)},
                   {"residual_tokens_per_s", static_cast<double>(B * residual) / median},
                   {"text_tokens_per_s", static_cast<double>(B * T) / median},
                   {"flops_per_step", flops},
                   {"flops_formula", "samples x (3 x decoder forward FLOPs + tower forward x (1 frozen | 3 trained) + "
                                     "adapter forward x (1 | 3)); decoder forward = S L (2 (attention + MLP weights) + "
                                     "4 H hd S) + 2 D V T (+ arch blocks), less the head's 6 D V per text position that is not a "
                                     "target (skipped by the loss)"},
                   {"achieved_flops_per_s", achieved},
                   {"peak_flops_per_s", peak},
                   {"mfu", achieved / peak},
                   {"gemm", gemm_json},
                   {"gemm_flops_per_s", gemm_best},
                   {"fraction_of_gemm", achieved / gemm_best},
                   {"peak_memory_bytes", peak_bytes},
                   {"attention_backend", attention},
                   {"last_loss", loss},
                   {"versions", runtime_versions(device)}};
  write_result(a, j);
  return kExitOk;
}

}  // namespace forge::app
