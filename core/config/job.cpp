// The core's config sections. Keys and defaults follow KempnerForge where it
// has the key (spec section 1.8); forge's own keys say so in their help.
#include "core/config/job.h"

#include <fmt/format.h>

namespace forge {

void TrainConfig::visit(ConfigVisitor& v) {
  v.field("batch_size", batch_size, "Samples per micro-batch (per data-parallel rank).", Bounds::positive());
  v.field("seq_len", seq_len,
          "Positions per sample used for tokens/s and MFU, and checked against model.max_seq_len; the VLM forward "
          "length itself is (image tokens in the residual) + vlm.max_text_len.",
          Bounds::positive());
  v.field("max_steps", max_steps, "Optimizer steps to train for.", Bounds::positive());
  v.field("grad_accum_steps", grad_accum_steps, "Micro-batches accumulated per optimizer step.", Bounds::positive());
  v.field("grad_clip_norm", grad_clip_norm, "Clip the global gradient L2 norm to this value.", Bounds::positive());
  v.field("seed", seed, "Seed of weight init and every random draw of the run.");
  v.field("data_seed", data_seed, "Seed of the data order; unset: seed.");
  v.field("mixed_precision", mixed_precision,
          "bf16: bf16 compute (autocast) with fp32 master weights and AdamW state, on CUDA and on CPUs with AMX or "
          "AVX512-BF16 (a CPU without them computes in fp32 and the log says so); fp32: fp32 everywhere. fp16 and "
          "fp8 are not supported by forge.",
          {"bf16", "fp16", "fp32", "fp8"});
  v.require(mixed_precision == "bf16" || mixed_precision == "fp32", "mixed_precision",
            fmt::format("\"{}\" is not supported by forge; use \"bf16\" or \"fp32\"", mixed_precision));
  v.field("loss_fn", loss_fn,
          "Token cross-entropy; chunked_cross_entropy is accepted and computes the same loss.",
          {"cross_entropy", "chunked_cross_entropy"});
  v.field("z_loss_weight", z_loss_weight, "Weight of the z-loss mean(logsumexp(logits)^2) added to the loss.",
          Bounds::non_negative());
  v.field("device", device, "forge: where to train. auto picks CUDA when a GPU is visible, else the CPU.",
          {"auto", "cpu", "cuda"});
  v.field("threads", threads, "forge: intra-op CPU threads for LibTorch; 0 keeps LibTorch's default.",
          Bounds::non_negative());
  v.unimplemented("compile_model", "torch.compile has no LibTorch equivalent");
  v.field("activation_checkpointing", activation_checkpointing,
          "Recompute decoder layers in backward instead of keeping their activations: full checkpoints every layer "
          "(with its cross-attention block, for every arch), selective every second layer (forge's choice; "
          "KempnerForge's selective wraps attention modules only), none keeps all.",
          {"none", "full", "selective"});
  v.unimplemented("ce_chunk_size", "the loss is computed in one piece");
  v.unimplemented("shutdown_timeout_sec", "");
  v.unimplemented("nccl_health_check_interval", "");
}

int64_t activation_checkpointing_every(const TrainConfig& train) {
  if (train.activation_checkpointing == "full") return 1;
  if (train.activation_checkpointing == "selective") return 2;
  return 0;
}

void OptimizerConfig::visit(ConfigVisitor& v) {
  v.field("name", name, "Optimizer. forge implements AdamW (decoupled weight decay).",
          {"adamw", "lion", "muon", "schedule_free_adamw"});
  v.require(name == "adamw", "name", fmt::format("\"{}\" is not implemented by forge; use \"adamw\"", name));
  v.field("lr", lr, "Peak learning rate.", Bounds::positive());
  v.field("weight_decay", weight_decay,
          "Decoupled weight decay, applied to matrices only (never to norms and biases; embeddings only with "
          "decay_embeddings).",
          Bounds::non_negative());
  v.field("betas", betas, "AdamW (beta1, beta2).", 2, Bounds::range(0.0, 1.0, true, false));
  v.field("eps", eps, "AdamW epsilon.", Bounds::positive());
  v.field("decay_embeddings", decay_embeddings,
          "forge: also apply weight decay to the token embedding (KempnerForge does; forge does not by default).");
  v.field("fused", fused,
          "One fused AdamW pass per parameter instead of per-tensor ops: forge's for fp32 parameters on CPUs with "
          "AVX-512 (it also applies the gradient clip as it reads the gradients), at::_fused_adamw_ elsewhere. "
          "Same update and state; the last bits of the weights may differ from the unfused path.");
  for (const char* k : {"muon_momentum", "muon_ns_steps", "muon_adam_lr", "schedule_free_warmup_steps"})
    v.unimplemented(k, "forge implements AdamW only");
}

void SchedulerConfig::visit(ConfigVisitor& v) {
  v.field("name", name,
          "Learning-rate factor after a linear warmup: cosine and linear decay to min_lr_ratio; wsd holds for "
          "stable_steps then decays (wsd_decay_type); rex is max(min_lr_ratio, (1 - progress)^rex_alpha); constant "
          "holds 1; none is 1 from step 0 with no warmup. Formulas: docs/training.md.",
          {"cosine", "linear", "wsd", "constant", "rex", "none"});
  v.field("warmup_steps", warmup_steps, "Linear warmup of the factor from 0 to 1 over this many steps.",
          Bounds::non_negative());
  v.field("decay_steps", decay_steps,
          "Steps of the decay; unset: the rest of training (max_steps - warmup_steps [- stable_steps for wsd]).",
          Bounds::non_negative());
  v.field("min_lr_ratio", min_lr_ratio, "Final learning rate as a fraction of optimizer.lr.", Bounds::range(0.0, 1.0));
  v.field("stable_steps", stable_steps, "wsd: steps held at the full rate after warmup; unset: 0.",
          Bounds::non_negative());
  v.field("wsd_decay_type", wsd_decay_type, "wsd: shape of the decay.", {"cosine", "linear", "sqrt"});
  v.field("rex_alpha", rex_alpha, "rex: exponent of the decay.", Bounds::positive());
}

void DataConfig::visit(ConfigVisitor& v) {
  v.field("type", type,
          "forge: the dataset. shapes: the embedded, procedurally drawn image-caption set (no download); jsonl: a "
          "manifest of {\"image\", \"text\", \"prompt\"} lines at path.",
          {"shapes", "jsonl"});
  v.field("path", path, "forge: the JSONL manifest (type = \"jsonl\"); image paths in it are relative to it.");
  v.field("tokenizer_path", tokenizer_path,
          "A Hugging Face tokenizer.json (byte-level BPE, SentencePiece-style BPE with byte fallback, or Unigram); "
          "empty: the init_from_hf folder's tokenizer.json, else forge's byte-level tokenizer (259 ids).");
  v.field("hf_image_size", hf_image_size,
          "Square image size fed to the encoder. When the encoder fixes its size (siglip, clip) this must match it; "
          "left out, the encoder's size is used.",
          Bounds::positive());
  v.field("num_workers", num_workers, "Background threads decoding and batching samples.", Bounds::non_negative());
  v.field("prefetch_factor", prefetch_factor, "Batches prepared ahead of the training step (queue depth).",
          Bounds::positive());
  v.field("pin_memory", pin_memory, "Pin batches in page-locked memory when training on CUDA.");
  v.field("bad_rows", bad_rows,
          "forge: a manifest row that cannot be used: fail stops with its file:line; skip counts it and goes on.",
          {"fail", "skip"});
  v.field("chat_template", chat_template,
          "forge: a format string with {prompt} and {text} wrapping each sample, e.g. \"User: {prompt}\\nAssistant: "
          "{text}\"; empty: prompt then text.");
  v.field("bos_token_id", bos_token_id,
          "forge: BOS id, overriding the tokenizer's. Unset with model.init_from_hf: the folder's "
          "generation_config.json / config.json, else tokenizer_config.json.",
          Bounds::non_negative());
  v.field("eos_token_id", eos_token_id, "forge: EOS id (appended to every caption; generation stops on it); as bos_token_id.",
          Bounds::non_negative());
  v.field("pad_token_id", pad_token_id, "forge: PAD id; as bos_token_id (no pad token at all: EOS).",
          Bounds::non_negative());
  v.field("shapes_train_samples", shapes_train_samples, "forge: size of the embedded dataset's training split.",
          Bounds::positive());
  v.field("shapes_heldout_samples", shapes_heldout_samples, "forge: size of the embedded dataset's held-out split.",
          Bounds::positive());
  v.field("shapes_seed", shapes_seed, "forge: seed that draws the embedded dataset (fixed per split).");
  v.field("blank_images", blank_images,
          "forge: replace every image by a blank one (a control run: the captions' image words drop to chance).");
  v.unsupported("hf_dataset_name",
                "Hugging Face datasets; convert the data to a JSONL manifest (type = \"jsonl\", path = ...)", "\"\"");
  for (const char* k : {"hf_dataset_split", "hf_dataset_config", "hf_dataset_image_field", "hf_dataset_text_field",
                        "hf_dataset_prompt_field", "hf_streaming"})
    v.unimplemented(k, "Hugging Face datasets; use type = \"jsonl\"");
  v.unsupported("dataset_path", "text-only pretraining data", "\"\"");
  v.unsupported("file_pattern", "text-only pretraining data", "\"\"");
  v.unsupported("pack_sequences", "sequence packing of text-only pretraining data", "false");
  v.unsupported("datasets", "dataset mixtures", "[]");
  v.unsupported("phases", "data phases", "[]");
  for (const char* k : {"mix_temperature", "anneal_start_step", "anneal_weights"})
    v.unimplemented(k, "dataset mixtures and phases");
  v.require(type != "jsonl" || !path.empty(), "path", "type = \"jsonl\" needs path = \"<manifest.jsonl>\"");
}

void VideoConfig::visit(ConfigVisitor& v) {
  v.field("data_root", data_root,
          "The clips: webvid, the dataset root (raw/<dataset_name>/data/<train|val>/partitions/*.csv with videoid "
          "and name columns, videos under raw/videos/<split>/); jsonl, a folder with <split>.jsonl manifests of "
          "{\"video\", \"text\", \"prompt\"} lines, video paths relative to the manifest.");
  v.field("dataset_type", dataset_type, "How data_root is laid out.", {"webvid", "jsonl"});
  v.field("dataset_name", dataset_name, "webvid: the corpus folder under raw/ holding the CSV manifests.");
  v.field("sampling_policy", sampling_policy,
          "Which frames a clip gives: uniform takes round(duration x fps) frames, clamped to [min_frames, "
          "max_frames], evenly spaced from the first to the last instant.",
          {"uniform"});
  v.field("split", split, "The manifest to read.", {"train", "validation"});
  v.field("max_samples", max_samples, "Read at most this many clips (0: all).", Bounds::non_negative());
  v.field("max_frames", max_frames,
          "Frames per clip the model takes; a clip with fewer is padded with masked frames.", Bounds::positive());
  v.field("min_frames", min_frames, "Frames taken from even a short clip (its last frame repeats).",
          Bounds::positive());
  v.field("fps", fps, "Frames per second of clip time.", Bounds::positive());
  v.field("frame_size", frame_size,
          "Square frame size fed to the encoder; an encoder with a fixed size (siglip, clip) uses its own.",
          Bounds::positive());
  v.field("prompt", prompt, "Text before every caption, masked from the loss.");
  v.field("pool_window", pool_window,
          "forge: each frame's patch grid is pooled in pool_window x pool_window windows by the adapter (its "
          "own weights, this window instead of [adapter] pool_window; adapters that do not pool average the "
          "windows first).",
          Bounds::positive());
  v.unsupported("datasets", "mixtures of video corpora", "[]");
  v.require(min_frames <= max_frames, "min_frames",
            fmt::format("min_frames = {} exceeds max_frames = {}", min_frames, max_frames));
  v.require(!data_root.empty(), "data_root", "[video] needs data_root, the folder holding the clips");
}

void CheckpointConfig::visit(ConfigVisitor& v) {
  v.field("dir", dir,
          "Run directory: step_<N>/ checkpoints, the latest pointer, metrics.jsonl and the resolved config.");
  v.field("interval", interval, "Save every this many steps.", Bounds::positive());
  v.field("keep_last_n", keep_last_n,
          "Checkpoints kept; older ones are deleted once a newer one is complete. <= 0 keeps all.");
  v.field("load_path", load_path,
          "Start from this checkpoint folder when the run directory has none (weights, optimizer and step).");
  v.field("ignore_freeze_mismatch", ignore_freeze_mismatch,
          "Resume even when the checkpoint's freeze state differs from this config's at that step (warning only).");
  v.field("save_final", save_final, "forge: save a checkpoint when training ends cleanly.");
  v.unimplemented("async_mode", "checkpoints are written synchronously");
  v.unimplemented("dyn_ckpt_window", "");
  v.unimplemented("export_dtype", "");
  v.unsupported("exclude_from_loading", "partial checkpoint loading", "[]");
}

void MetricsConfig::visit(ConfigVisitor& v) {
  v.field("log_interval", log_interval, "Log every this many steps (and at step 1).", Bounds::positive());
  v.field("jsonl", jsonl, "forge: also append every logged step as one JSON line to <checkpoint.dir>/metrics.jsonl.");
  v.field("peak_tflops", peak_tflops,
          "forge: peak dense TFLOP/s per device for MFU; 0 means 989 on a GPU (H100/H200 bf16; set 312 for an "
          "A100) and 1 on a CPU.",
          Bounds::non_negative());
  v.field("enable_tensorboard", enable_tensorboard,
          "Write TensorBoard event files (rank 0): every logged scalar, the eval metrics, and at each evaluation "
          "the generated captions (text) and the captioned held-out images.");
  v.field("tensorboard_dir", tensorboard_dir,
          "Folder of the event files; a relative path is inside checkpoint.dir. View with tensorboard --logdir.");
  v.require(!enable_tensorboard || !tensorboard_dir.empty(), "tensorboard_dir",
            "is empty; name a folder (a relative one is inside checkpoint.dir) or set enable_tensorboard = false");
  v.field("report", report,
          "forge: write <checkpoint.dir>/report.html (curves, config, plugins, captioned images) at each "
          "evaluation and at the end; forge report RUN_DIR writes it for any run.");
  for (const char* k : {"enable_wandb", "wandb_project", "wandb_run_name", "wandb_run_id"})
    v.unimplemented(k, "forge writes metrics.jsonl, TensorBoard event files and report.html instead");
}

void EvalConfig::visit(ConfigVisitor& v) {
  v.field("enabled", enabled,
          "Evaluate on held-out data during and after training: loss and caption accuracy (D9). KempnerForge "
          "ignores [eval] for VLMs.");
  v.field("interval", interval, "Evaluate every this many steps, and once at the end.", Bounds::positive());
  v.field("steps", steps, "Held-out batches per evaluation.", Bounds::positive());
  v.field("dataset_path", dataset_path,
          "Held-out JSONL manifest for data.type = \"jsonl\"; the embedded dataset brings its own held-out split.");
  v.field("caption_samples", caption_samples,
          "Held-out samples captioned at each evaluation (greedy, KV cache) and scored with BLEU-4, CIDEr-D and "
          "exact match against their captions; 0 turns generation off.",
          Bounds::non_negative());
  v.unsupported("file_pattern", "token-file eval data; give a JSONL manifest as dataset_path", "\"\"");
  v.unsupported("hf_dataset_name", "Hugging Face eval data; give a JSONL manifest as dataset_path", "\"\"");
  for (const char* k : {"hf_dataset_config", "hf_dataset_split"})
    v.unimplemented(k, "Hugging Face eval data");
}

void DistributedConfig::visit(ConfigVisitor& v) {
  v.field("dp_shard", dp_shard,
          "Ranks that split the model, its gradients and AdamW state between them (fully sharded data parallel); "
          "-1: the launched world size divided by dp_replicate; 1: every rank holds the whole model (replicated).");
  v.require(dp_shard == -1 || dp_shard > 0, "dp_shard", fmt::format("got {}; must be -1 or > 0", dp_shard));
  v.field("dp_replicate", dp_replicate,
          "Replica groups; dp_replicate × dp_shard must equal the launched world size. Both > 1: hybrid "
          "sharding, each group of dp_shard ranks shards the model and the groups replicate each other.",
          Bounds::positive());
  v.field("bucket_size_mb", bucket_size_mb,
          "forge: replicated runs average gradients in buckets of this size, each all-reduced as soon as its "
          "gradients are in (while backward runs), as DDP's bucket_cap_mb.",
          Bounds::positive());
  v.field("prefetch", prefetch,
          "forge: sharded runs start gathering the next block's parameters while the current one computes. auto: "
          "on with NCCL (GPUs), off with Gloo, where on a few CPU cores the gather thread competes with compute "
          "(bench/RESULTS.md).",
          {"auto", "on", "off"});
  v.field("backend", backend,
          "Process-group backend per device, \"cpu:gloo,cuda:nccl\" (or one name for both): Gloo on CPUs, NCCL on "
          "GPUs (a build without nccl.h uses Gloo over host memory, with a warning).");
  v.field("nccl_timeout_sec", nccl_timeout_sec, "Timeout of collectives, in seconds.", Bounds::positive());
  v.unsupported("tp", "tensor parallelism", "1");
  v.unsupported("pp", "pipeline parallelism", "1");
  v.unsupported("ep", "expert parallelism", "1");
  v.unsupported("cp", "context parallelism", "1");
  v.unimplemented("pp_schedule", "pipeline parallelism");
}

void PluginsConfig::visit(ConfigVisitor& v) {
  v.field("paths", paths,
          "forge: extra plugin folders, searched after --plugin-path and FORGE_PLUGIN_PATH and before the "
          "installed plugins.");
}

}  // namespace forge
