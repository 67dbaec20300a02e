#include "core/training/trainer.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/checkpoint/checkpoint.h"
#include "core/data/datasets.h"
#include "core/data/job_tokenizer.h"
#include "core/data/loader.h"
#include "core/data/shapes.h"
#include "core/distributed/data_parallel.h"
#include "core/distributed/dist.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "core/reporting/run_outputs.h"
#include "core/training/loss.h"
#include "core/training/optim.h"
#include "core/training/precision.h"
#include "core/training/run_files.h"
#include "core/training/step.h"
#include "core/util/logging.h"
#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/logging.h"

namespace fs = std::filesystem;

namespace forge {

namespace {

std::atomic<bool> g_stop{false};
// The first SIGINT/SIGTERM asks for a clean stop; a second one kills as usual.
extern "C" void on_stop_signal(int sig) {
  g_stop = true;
  std::signal(sig, SIG_DFL);
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One JSON object per line, appended and flushed.
}  // namespace

at::Device pick_device(const std::string& want) {
  const bool cuda = torch::cuda::is_available();
  if (want == "cuda" && !cuda)
    throw UserError("device \"cuda\" asked for (train.device or --device) but no CUDA device is visible; use \"auto\" "
                    "or \"cpu\"");
  if (!(want == "cuda" || (want == "auto" && cuda))) return at::Device(at::kCPU);
  const char* local = std::getenv("LOCAL_RANK");
  const int index = local ? std::atoi(local) : 0;
  if (index < 0 || index >= static_cast<int>(torch::cuda::device_count()))
    throw UserError(fmt::format("LOCAL_RANK={} but {} CUDA device(s) are visible", index, torch::cuda::device_count()));
  at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
  return device;
}

namespace {

// Signal handlers for the duration of train(), restored however it ends.
struct SignalScope {
  bool active;
  void (*old_int)(int) = SIG_DFL;
  void (*old_term)(int) = SIG_DFL;
  explicit SignalScope(bool on) : active(on) {
    if (!active) return;
    old_int = std::signal(SIGINT, on_stop_signal);
    old_term = std::signal(SIGTERM, on_stop_signal);
  }
  ~SignalScope() {
    if (!active) return;
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
  }
};

// " | aux_loss 1.001 router_z_loss 3.1 balance 0.42": the StepParticipants' sums, and
// the smallest over the largest expert count when there are counts.
std::string describe_report(const StepReport& r) {
  std::string out;
  for (const auto& [k, v] : r.sums) out += fmt::format(" {} {:.4g}", util::starts_with(k, "moe/") ? k.substr(4) : k, v);
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const auto& [k, v] : r.series)
    if (util::starts_with(k, "moe/expert_counts/"))
      for (double c : v) lo = std::min(lo, c), hi = std::max(hi, c);
  if (hi > 0) out += fmt::format(" balance {:.2f}", lo / hi);
  return out.empty() ? out : " |" + out;
}

std::string describe_freeze(const std::vector<FreezeSpec>& specs) {
  std::vector<std::string> parts;
  for (const auto& s : specs) parts.push_back(fmt::format("{} {}", s.module, s.frozen ? "frozen" : "trainable"));
  return util::join(parts, ", ");
}

// The freeze state a checkpoint was saved with must be this config's at that step.
void check_resume_freeze(const std::string& resume_from, const TrainState& state, const VLMConfig& vlm,
                         bool ignore_mismatch) {
  auto expected = canonical_freeze(effective_freeze(state.step, vlm.freeze, vlm.freeze_schedule));
  std::set<std::string> shared_modules;
  for (const auto& e : expected)
    for (const auto& s : state.vlm_freeze)
      if (e.module == s.module) shared_modules.insert(e.module);
  auto restrict = [&](const std::vector<FreezeSpec>& v) {
    std::vector<FreezeSpec> out;
    for (const auto& f : v)
      if (shared_modules.count(f.module)) out.push_back(f);
    return out;
  };
  if (restrict(expected) == restrict(state.vlm_freeze)) return;
  std::string msg = fmt::format("{} was saved with freeze state [{}] at step {}, but this config gives [{}]",
                                resume_from, describe_freeze(state.vlm_freeze), state.step, describe_freeze(expected));
  if (!ignore_mismatch) throw UserError(msg + "; set checkpoint.ignore_freeze_mismatch = true to resume anyway");
  log()->warn("{} (ignored: checkpoint.ignore_freeze_mismatch)", msg);
}

// What one rank holds between steps (the most of any rank): weights,
// gradients and AdamW moments, against the whole model's 16 bytes per
// parameter. Measured from the tensors themselves.
// Returns the bytes the fullest rank holds.
double log_rank_memory(const torch::nn::Module& model, const DataParallel& dp, Distributed& dist,
                       torch::optim::AdamW& optimizer, const ParamGroups& groups) {
  auto bytes = [](const at::Tensor& t) { return static_cast<double>(t.numel() * t.element_size()); };
  double weights = 0, whole = 0, grads = 0, moments = 0;
  for (const auto& [k, p] : nn::unique_named_parameters(model)) whole += bytes(p);
  weights = dp.sharded() ? static_cast<double>(dp.fsdp()->local_bytes()) : whole;
  for (const auto& p : groups.all())
    if (p.grad().defined()) grads += bytes(p.grad());
  for (const auto& [k, t] : optimizer_state(optimizer, groups))
    if (t.dim() > 0) moments += bytes(t);
  const double held = dist.max(weights + grads + moments);
  log()->info("memory per rank between steps: {} (weights {}, gradients {}, AdamW {}); the whole model's "
              "fp32 weights, gradients and AdamW state take {}",
              util::human_bytes(held), util::human_bytes(dist.max(weights)), util::human_bytes(dist.max(grads)),
              util::human_bytes(dist.max(moments)), util::human_bytes(4 * whole));
  return held;
}

}  // namespace

void request_stop() { g_stop = true; }

std::shared_ptr<Collator> make_collator(const JobConfig& job, std::shared_ptr<Tokenizer> tokenizer,
                                        const VLMImpl& model) {
  return std::make_shared<Collator>(std::move(tokenizer), job.vlm->max_text_len, model.residual_image_tokens() == 0,
                                    job.data.chat_template);
}

LoaderOptions train_loader_options(const JobConfig& job, const at::Device& device, int64_t rank, int64_t world) {
  LoaderOptions lo;
  lo.batch_size = job.train.batch_size;
  lo.seed = static_cast<uint64_t>(job.train.effective_data_seed());
  lo.workers = job.data.num_workers;
  lo.prefetch = job.data.prefetch_factor;
  lo.pin_memory = device.is_cuda() && job.data.pin_memory;
  lo.skip_bad = job.data.bad_rows == "skip";
  lo.frames = job.video ? job.video->max_frames : 0;
  lo.rank = rank;
  lo.world = world;
  return lo;
}

double peak_flops(const MetricsConfig& m, const at::Device& device) {
  if (m.peak_tflops > 0) return m.peak_tflops * 1e12;
  return device.is_cuda() ? 989e12 : 1e12;  // H100/H200 bf16 dense; KempnerForge's CPU convention
}

TrainSummary train(const LoadedConfig& loaded, Registry& registry, const TrainOptions& options) {
  const JobConfig& job = loaded.job;
  auto logger = log();
  const auto wall0 = Clock::now();
  if (!job.is_vlm())
    throw UserError(fmt::format("{}: forge train needs a [vlm] section (with [vision_encoder]); see "
                                "configs/shapes.toml",
                                job.source));
  // ---------------------------------------------------------------- device and ranks
  const at::Device device = pick_device(job.train.device);
  if (job.train.threads > 0) at::set_num_threads(static_cast<int>(job.train.threads));
  const Precision precision = resolve_precision(job.train.mixed_precision, device);
  auto dist = Distributed::from_env(job.distributed, device);
  DataParallel dp(job.distributed, *dist);
  const bool main_rank = dist->is_main();
  if (!main_rank) set_log_level("warn");  // rank 0 speaks for the job
  if (dp.sharded() && job.model.num_experts > 0 && job.model.moe_router == "sigmoid_topk")
    throw UserError("model.moe_router = \"sigmoid_topk\" cannot train sharded ([distributed] dp_shard > 1): its "
                    "load-balancing bias is moved outside backward, on whole parameters; use dp_shard = 1 "
                    "(replicated) or moe_router = \"softmax_topk\"");
  logger->info("device {}, {} CPU threads{}", device.str(), at::get_num_threads(),
               dist->world() > 1 ? ", " + dp.describe() : std::string());
  logger->info("precision: {} ({})", precision.describe(), precision.reason);

  // ---------------------------------------------------------------- tokenizer (checked before any weight is read)
  auto tokenizer = make_tokenizer(job.data);
  if (tokenizer->vocab_size() > job.model.vocab_size)
    throw UserError(fmt::format("model.vocab_size = {} is smaller than the tokenizer's {} ids ({}); set "
                                "model.vocab_size >= {}",
                                job.model.vocab_size, tokenizer->vocab_size(), tokenizer->describe(),
                                tokenizer->vocab_size()));

  // ---------------------------------------------------------------- model
  VLM model = build_vlm(job, registry);  // on the CPU; dp.attach puts it (or its shards) on the device
  model->set_activation_checkpointing(activation_checkpointing_every(job.train));
  {  // every rank starts from rank 0's weights
    std::vector<at::Tensor> ps;
    for (const auto& [k, p] : nn::unique_named_parameters(*model)) ps.push_back(p);
    dist->broadcast(ps);
  }
  const VLMConfig& vlm = *job.vlm;
  const StringListMap patterns = vlm.resolved_module_patterns();
  std::map<std::string, bool> baseline;  // requires_grad as built (e.g. MoT's unused norm is frozen)
  for (const auto& p : model->named_parameters(true)) baseline[p.key()] = p.value().requires_grad();
  const std::set<std::string> trainable = ever_trainable(*model, vlm);  // D2: before any freeze is applied
  check_freeze_specs(*model, vlm);  // a typo in a late stage fails now, not hours in

  // The freeze state at a step: the built state, then the specs in force (D3:
  // a stage at step 0 applies at step 0; raw patterns work).
  auto apply_freeze_at = [&](int64_t step) {
    for (auto& p : model->named_parameters(true)) p.value().requires_grad_(baseline.at(p.key()));
    auto specs = effective_freeze(step, vlm.freeze, vlm.freeze_schedule);
    apply_freeze(*model, specs, patterns);
    return specs;
  };
  auto set_modes = [&] {
    model->train();
    if (model->encoder_frozen()) model->vision_encoder->eval();  // a frozen tower also runs without dropout
  };

  // ---------------------------------------------------------------- resume: weights
  const std::string run_dir = job.checkpoint.dir;
  TrainState state;
  if (main_rank) recover_interrupted_saves(run_dir);
  dist->barrier();
  std::string resume_from = resolve_checkpoint(run_dir);
  if (resume_from.empty() && job.checkpoint.load_path) {
    resume_from = resolve_checkpoint(*job.checkpoint.load_path);
    if (resume_from.empty())
      throw UserError(fmt::format("checkpoint.load_path = \"{}\" holds no forge checkpoint", *job.checkpoint.load_path));
  }
  if (!resume_from.empty()) {
    state = read_train_state(resume_from);
    check_resume_freeze(resume_from, state, vlm, job.checkpoint.ignore_freeze_mismatch);
    load_checkpoint_weights(resume_from, *model);
  } else {
    BuildContext ctx{named_logger("plugin.arch." + vlm.arch), job.train.seed};
    model->transformer->hooks().prepare_fresh_run(*model->transformer, ctx);  // e.g. MoT warm start (D4)
  }
  dp.attach(*model, device, precision.compute_dtype());  // sharded: from here on each rank holds only its part of the weights

  // ---------------------------------------------------------------- optimizer
  const ParamGroups whole_groups = make_param_groups(*model, trainable, job.optimizer.decay_embeddings);
  const ParamGroups groups = dp.optimizer_groups(whole_groups);  // the shards when sharded
  auto optimizer = make_adamw(groups, job.optimizer);
  {
    double total = 0, decayed = 0;
    for (const auto& [k, p] : nn::unique_named_parameters(*model)) total += static_cast<double>(p.numel());
    for (const auto& [k, p] : whole_groups.decay) decayed += static_cast<double>(p.numel());
    logger->info("model: {} parameters, {} optimised at some step ({} with weight decay){}", util::human_count(total),
                 util::human_count(static_cast<double>(whole_groups.numel())), util::human_count(decayed),
                 dp.sharded() ? fmt::format("; this rank holds {} of them", util::human_count(static_cast<double>(
                                                                             dp.fsdp()->local_numel())))
                              : std::string());
  }

  // ---------------------------------------------------------------- data
  auto collator = make_collator(job, tokenizer, *model);
  const Preprocess prep = model->vision_encoder->preprocess();
  const int64_t image_size = job.data.hf_image_size;
  const LoaderOptions lo = train_loader_options(job, device, dist->rank(), dist->world());
  auto train_set = make_dataset(job, "train");
  DataLoader loader(train_set, collator, prep, image_size, lo);
  logger->info("data: {}; {} batches of {} per epoch; tokenizer {}", train_set->describe(), loader.batches_per_epoch(),
               lo.batch_size, tokenizer->describe());
  std::unique_ptr<DataLoader> heldout;
  if (job.eval.enabled) {
    if (auto held = make_dataset(job, "heldout")) {
      LoaderOptions ho = lo;
      ho.shuffle = false;
      ho.rank = 0;  // rank 0 evaluates the whole held-out set, whatever the world size
      ho.world = 1;
      ho.workers = std::min<int64_t>(lo.workers, 1);
      heldout = std::make_unique<DataLoader>(held, collator, prep, image_size, ho);
      logger->info("eval: {} batches of {} every {} steps", std::min(job.eval.steps, heldout->batches_per_epoch()),
                   lo.batch_size, job.eval.interval);
    } else {
      logger->info("eval: no held-out data (set eval.dataset_path to a JSONL manifest)");
    }
  }
  TrainSummary summary;
  if (job.data.type == "shapes") summary.chance_word_accuracy = ShapesDataset::chance_accuracy();

  // ---------------------------------------------------------------- resume: optimizer and data position
  if (!resume_from.empty()) {
    load_checkpoint_trainer(resume_from, *optimizer, groups, dp.shard_view());
    if (std::string note = loader.restore(state.data); !note.empty()) logger->warn("resume: {}", note);
    summary.resumed = true;
    logger->info("resuming from {} at step {} (epoch {}, batch {})", resume_from, state.step, loader.state().epoch,
                 loader.state().batches_yielded);
  }
  summary.start_step = state.step;
  auto freeze_now = apply_freeze_at(state.step);
  set_modes();
  logger->info("freeze at step {}: {}", state.step, describe_freeze(freeze_now));

  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw UserError(fmt::format("checkpoint.dir = \"{}\": cannot create it: {}", run_dir, ec.message()));
  if (main_rank) check_run_dir_writable(run_dir);
  RunOutputs outputs(job, registry, {device.str(), precision.describe(), dist->world(), peak_flops(job.metrics, device)},
                     main_rank, state.step, logger);

  // ---------------------------------------------------------------- the loop
  std::set<int64_t> stage_starts;
  for (const auto& st : vlm.freeze_schedule) stage_starts.insert(st.start_step);
  g_stop = false;
  SignalScope signals(options.handle_signals);
  auto save = [&]() {
    // One writer. Replicated ranks hold the same weights; sharded ones all take part in gathering them.
    if (!main_rank && !dp.sharded()) return;
    state.world_size = dist->world();
    state.vlm_freeze = canonical_freeze(effective_freeze(state.step, vlm.freeze, vlm.freeze_schedule));
    state.data = loader.state();
    SaveRequest req{run_dir, &state, model.get(), optimizer.get(), &groups, &job, &registry, job.checkpoint.keep_last_n,
                    dp.shard_view(), main_rank};
    const auto t = Clock::now();
    summary.last_checkpoint = save_checkpoint(req);
    if (main_rank) logger->info("checkpoint {} ({:.1f}s)", summary.last_checkpoint, since(t));
  };
  auto run_eval = [&](const char* when) {
    if (!heldout) return;
    if (!main_rank && !dp.every_rank_evaluates()) {  // rank 0 evaluates; the others wait for it
      dist->barrier();
      return;
    }
    const auto t = Clock::now();
    dp.begin_eval();
    EvalResult r = evaluate(*model, *heldout, job.eval.steps, device, precision);
    CaptionEvalOptions caption_options{job.eval.caption_samples, job.model.max_seq_len, device, precision};
    caption_options.batch_size = job.train.batch_size;  // what fits in training fits here
    if (dp.sharded()) {  // every rank generates, gathering each layer in turn: all decode the same, in step
      caption_options.agree = [&](at::Tensor& next) { dist->broadcast({next}); };
      caption_options.every_rank = [&](bool ok) { return dist->sum(ok ? 0.0 : 1.0) == 0.0; };
    }
    CaptionEval captions = caption_eval(*model, *heldout, caption_options);
    dp.end_eval();
    set_modes();
    if (!main_rank) {  // a sharded model: every rank evaluated the same batches; rank 0 reports
      dist->barrier();
      return;
    }
    outputs.eval(state.step, when, r, captions, since(t));
    summary.final_eval = r;
    if (!captions.samples.empty()) summary.final_captions = captions;
    dist->barrier();
  };

  const int64_t max_steps = job.train.max_steps;
  const int64_t accum = job.train.grad_accum_steps;
  const int64_t text_len = vlm.max_text_len;
  int64_t nan_streak = 0;
  int64_t last_saved = resume_from.empty() ? -1 : state.step;
  double ema_step = 0;
  const double peak = peak_flops(job.metrics, device);
  StepParts step_parts{*model, dp, *dist, groups, precision, device, job.train.z_loss_weight, job.train.grad_clip_norm,
                       0, max_steps};
  while (state.step < max_steps) {
    if (stage_starts.count(state.step) && state.step != summary.start_step) {
      freeze_now = apply_freeze_at(state.step);
      set_modes();
      logger->info("freeze stage at step {}: {}", state.step, describe_freeze(freeze_now));
    }
    const double lr = job.optimizer.lr * lr_factor(job.scheduler, state.step, max_steps);
    set_lr(*optimizer, lr);
    optimizer->zero_grad(/*set_to_none=*/true);
    dp.begin_step();

    const auto t0 = Clock::now();
    const int64_t step_no = state.step + 1;
    step_parts.step = state.step;
    const StepStats st = compute_gradients(step_parts, accum, [&] {
      Batch batch = loader.next();
      if (options.on_batch) options.on_batch(step_no, batch);
      return batch;
    });
    const double loss = st.loss, grad_norm = st.grad_norm, data_wait = st.data_wait_s;
    const int64_t label_tokens = st.label_tokens, samples = st.samples;
    const bool finite = std::isfinite(loss) && std::isfinite(grad_norm);
    if (!finite) {
      optimizer->zero_grad(true);
      finish_step(*model, false);
      logger->warn("step {}: loss {} / grad norm {} is not finite; update skipped ({} in a row)", state.step + 1,
                   loss, grad_norm, nan_streak + 1);
      if (++nan_streak >= 10)
        throw RuntimeError(fmt::format("loss was NaN/Inf for 10 consecutive steps (last at step {}); lower "
                                       "optimizer.lr or check the data; the last checkpoint holds the weights from "
                                       "before",
                                       state.step + 1));
    } else {
      nan_streak = 0;
      optimizer_step(*optimizer, st.grad_scale);
      finish_step(*model, true);
      state.tokens_seen += label_tokens;
      summary.losses.push_back(loss);
    }
    ++state.step;
    double rank_state_bytes = 0;  // logged with the first step of a run
    if (state.step == summary.start_step + 1) {
      rank_state_bytes = log_rank_memory(*model, dp, *dist, *optimizer, groups);
      if (const GradBuckets* b = dp.buckets())
        logger->info("gradients: {} bucket(s), {} of them all-reduced while backward still ran", b->buckets(),
                     b->launched_during_backward());
    }
    const double dt = since(t0);
    ema_step = ema_step == 0 ? dt : 0.9 * ema_step + 0.1 * dt;

    if (finite && (state.step == 1 || state.step % job.metrics.log_interval == 0 || state.step == max_steps)) {
      const double step_flops = train_step_flops(*model, samples, text_len, label_tokens);
      const double mfu = step_flops / dt / (peak * dist->world());
      const double tok_s = static_cast<double>(label_tokens) / dt;
      const StepReport report = participant_report(*model);
      logger->info("step {}/{} | loss {:.4f} | lr {:.2e} | grad {:.3f} | {} tok/s | MFU {:.2f}% | {:.3f} s/step "
                   "(data wait {:.3f}){} | ETA {}",
                   state.step, max_steps, loss, lr, grad_norm, util::human_count(tok_s), 100 * mfu, dt, data_wait,
                   describe_report(report), util::human_duration(ema_step * static_cast<double>(max_steps - state.step)));
      nlohmann::json row{{"step", state.step},         {"loss", loss},
                         {"lr", lr},                   {"grad_norm", grad_norm},
                         {"tokens_per_s", tok_s},      {"mfu", mfu},
                         {"step_time_s", dt},          {"data_wait_s", data_wait},
                         {"text_tokens", label_tokens}, {"tokens_seen", state.tokens_seen},
                         {"epoch", loader.state().epoch}};
      if (rank_state_bytes > 0) row["rank_state_bytes"] = rank_state_bytes;
      for (const auto& [k, v] : report.sums) row[k] = v;
      for (const auto& [k, v] : report.series) row[k] = v;
      outputs.step(row);
    }
    if (heldout && state.step % job.eval.interval == 0 && state.step != max_steps) run_eval("at");
    if (state.step % job.checkpoint.interval == 0) {
      save();
      last_saved = state.step;
    }
    if (dist->max(g_stop ? 1.0 : 0.0) > 0) {  // a stop on any rank stops every rank
      if (main_rank) logger->warn("stop requested: stopping after step {}", state.step);
      if (last_saved != state.step) {
        save();
        last_saved = state.step;
      }
      summary.interrupted = true;
      break;
    }
  }
  if (!summary.interrupted) {
    run_eval("final,");
    if (job.checkpoint.save_final && last_saved != state.step) save();
  }
  if (lo.skip_bad && loader.skipped() > 0) {
    for (const auto& [why, n] : loader.skipped_by_reason()) logger->warn("skipped {} example(s): {}", n, why);
  }
  if (dist->world() > 1 && !dp.sharded()) {  // replicated ranks must have trained the same model
    double worst = 0;
    for (const auto& [k, p] : nn::unique_named_parameters(*model)) {
      at::Tensor ref = p.detach().clone();
      dist->broadcast({ref});
      worst = std::max(worst, (ref - p.detach()).abs().max().item<double>());
    }
    worst = dist->max(worst);
    logger->info("{} ranks in sync: largest weight difference to rank 0 is {}", dist->world(), worst);
    if (worst > 0) throw RuntimeError(fmt::format("data-parallel ranks diverged (weight difference {})", worst));
  }
  summary.report_path = outputs.finish();
  summary.tensorboard_dir = outputs.tensorboard_dir();
  summary.end_step = state.step;
  summary.seconds = since(wall0);
  return summary;
}

}  // namespace forge
