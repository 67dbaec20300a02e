// The whole job config: every TOML section as a struct. The plugin-facing
// sections ([model], [vision_encoder], [adapter], [vlm]) are declared in the
// SDK (forge/config.h); the rest belong to the core.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "forge/config.h"
#include "forge/export.h"

namespace forge {

struct FORGE_API TrainConfig {
  int64_t batch_size = 8;
  int64_t seq_len = 2048;
  int64_t max_steps = 100000;
  int64_t grad_accum_steps = 1;
  double grad_clip_norm = 1.0;
  int64_t seed = 42;
  std::optional<int64_t> data_seed;
  std::string mixed_precision = "bf16";
  std::string loss_fn = "cross_entropy";
  double z_loss_weight = 0.0;
  std::string device = "auto";
  int64_t threads = 0;
  std::string activation_checkpointing = "none";
  void visit(ConfigVisitor& v);
  int64_t effective_data_seed() const { return data_seed.value_or(seed); }
};

// Decoder layers between activation checkpoints: none 0, full 1, selective 2.
FORGE_API int64_t activation_checkpointing_every(const TrainConfig& train);

struct FORGE_API OptimizerConfig {
  std::string name = "adamw";
  double lr = 3e-4;
  double weight_decay = 0.1;
  std::vector<double> betas{0.9, 0.95};
  double eps = 1e-8;
  bool decay_embeddings = false;
  bool fused = true;
  void visit(ConfigVisitor& v);
};

struct FORGE_API SchedulerConfig {
  std::string name = "cosine";
  int64_t warmup_steps = 2000;
  std::optional<int64_t> decay_steps;
  double min_lr_ratio = 0.1;
  std::optional<int64_t> stable_steps;
  std::string wsd_decay_type = "cosine";
  double rex_alpha = 1.0;
  void visit(ConfigVisitor& v);
};

struct FORGE_API DataConfig {
  std::string type = "shapes";
  std::string path;
  std::string tokenizer_path;
  int64_t hf_image_size = 224;
  int64_t num_workers = 4;
  int64_t prefetch_factor = 2;
  bool pin_memory = true;
  std::string bad_rows = "fail";
  std::string chat_template;
  std::optional<int64_t> bos_token_id;  // unset: the tokenizer's (init_from_hf fills them from the folder)
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;
  int64_t shapes_train_samples = 50000;
  int64_t shapes_heldout_samples = 512;
  int64_t shapes_seed = 1234;
  bool blank_images = false;
  void visit(ConfigVisitor& v);
};

// [video]: train on video clips instead of images (spec 1.7 and 4.4). Each
// clip gives max_frames frames (fewer are padded and masked); each frame is
// encoded by the tower and pooled by the adapter with pool_window.
struct FORGE_API VideoConfig {
  std::string data_root;                 // relative to the config file
  std::string dataset_type = "webvid";   // "webvid" (the reference's CSV layout) | "jsonl" (forge's manifest)
  std::string dataset_name = "webvid-10M";
  std::string sampling_policy = "uniform";
  std::string split = "train";           // "train" | "validation"
  int64_t max_samples = 0;               // 0: all
  int64_t max_frames = 16;
  int64_t min_frames = 4;
  double fps = 2.0;
  int64_t frame_size = 224;
  std::string prompt;
  int64_t pool_window = 3;               // forge: the adapter's pooling window for frames
  void visit(ConfigVisitor& v);
};

struct FORGE_API CheckpointConfig {
  std::string dir = "checkpoints";
  int64_t interval = 1000;
  int64_t keep_last_n = 3;
  std::optional<std::string> load_path;
  bool ignore_freeze_mismatch = false;
  bool save_final = true;
  void visit(ConfigVisitor& v);
};

struct FORGE_API MetricsConfig {
  int64_t log_interval = 10;
  bool jsonl = true;
  double peak_tflops = 0.0;
  bool enable_tensorboard = false;
  std::string tensorboard_dir = "tensorboard";
  bool report = true;
  void visit(ConfigVisitor& v);
};

struct FORGE_API EvalConfig {
  bool enabled = true;
  int64_t interval = 1000;
  int64_t steps = 50;
  std::string dataset_path;
  int64_t caption_samples = 16;
  void visit(ConfigVisitor& v);
};

struct FORGE_API DistributedConfig {
  int64_t dp_shard = -1;
  int64_t dp_replicate = 1;
  double bucket_size_mb = 25;
  std::string prefetch = "auto";
  std::string backend = "cpu:gloo,cuda:nccl";
  int64_t nccl_timeout_sec = 1800;
  void visit(ConfigVisitor& v);
};

struct FORGE_API PluginsConfig {
  std::vector<std::string> paths;
  void visit(ConfigVisitor& v);
};

struct FORGE_API JobConfig {
  std::string source;  // the config file ("" when built in code)

  ModelConfig model;
  std::shared_ptr<EncoderConfig> vision_encoder;  // null without [vision_encoder] and [vlm]
  std::shared_ptr<AdapterConfig> adapter;         // materialised with defaults when [vlm] is set
  std::shared_ptr<VLMConfig> vlm;                 // null: text-only
  TrainConfig train;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  DataConfig data;
  CheckpointConfig checkpoint;
  MetricsConfig metrics;
  EvalConfig eval;
  DistributedConfig distributed;
  PluginsConfig plugins;
  std::optional<VideoConfig> video;  // set: the job trains on video clips

  bool is_vlm() const { return vlm != nullptr; }
};

}  // namespace forge
