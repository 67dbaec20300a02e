#include "core/checkpoint/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/headeronly/version.h>

#include "core/checkpoint/state_dict.h"
#include "core/config/loader.h"
#include "core/registry/registry.h"
#include "core/util/files.h"
#include "forge/error.h"
#include "forge/logging.h"
#include "forge/version.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge {

void failpoint(const char* point) {
  const char* env = std::getenv("FORGE_FAILPOINT");
  if (env && std::string(env) == point) throw RuntimeError(fmt::format("failpoint {} triggered", point));
}

namespace {

std::string step_name(int64_t step) { return fmt::format("step_{:08d}", step); }

int64_t step_of(const std::string& name) {
  static const std::regex re("^step_([0-9]+)$");
  std::smatch m;
  return std::regex_match(name, m, re) ? std::stoll(m[1]) : -1;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::trunc);
  out << text;
  out.flush();
  if (!out) throw RuntimeError(fmt::format("{}: write failed: {}", p.string(), std::strerror(errno)));
}

void sync_path(const fs::path& p) { util::sync_path(p.string()); }

}  // namespace

void recover_interrupted_saves(const std::string& run_dir) {
  const fs::path run(run_dir);
  static const std::regex re(R"(^\.(step_[0-9]+)\.(tmp|old|del)-[0-9]+$|^\.latest\.tmp-[0-9]+$)");
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(run, ec)) found.push_back(e.path());
  for (const auto& p : found) {
    std::smatch m;
    const std::string base = p.filename().string();
    if (!std::regex_match(base, m, re)) continue;
    if (m[2] == "old" && !fs::exists(run / m[1].str(), ec)) {
      fs::rename(p, run / m[1].str(), ec);
      if (!ec) {
        log()->warn("{}: restored {} from an interrupted save", run.string(), m[1].str());
        continue;
      }
    }
    util::remove_tree(p.string());
  }
}

namespace {

// The model's and the optimizer's tensors, whole, one at a time (gathered
// from the ranks' shards when the run is sharded).
struct SaveTensors {
  std::vector<safetensors::PendingTensor> model, trainer;
  bool model_done = false, trainer_done = false;

  explicit SaveTensors(const SaveRequest& r) {
    const ShardView* shards = r.shards;
    auto whole = [shards](const std::string& param, const at::Tensor& t) {
      if (!shards || !shards->is_sharded(param) || t.dim() == 0)
        return safetensors::PendingTensor{param, t.scalar_type(), t.sizes().vec(), [t] { return t; }};
      return safetensors::PendingTensor{param, t.scalar_type(), shards->full_shape(param),
                                        [shards, param, t] { return shards->gather(param, t); }};
    };
    for (const auto& [name, t] : state_dict(*r.model)) model.push_back(whole(name, t));
    if (r.optimizer) {
      for (const auto& [key, t] : optimizer_state(*r.optimizer, *r.groups)) {
        const std::string param = key.substr(0, key.rfind('.'));
        auto p = whole(param, t);
        p.name = key;
        trainer.push_back(std::move(p));
      }
    }
    at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
    trainer.push_back({"rng.cpu", rng.scalar_type(), rng.sizes().vec(), [rng] { return rng; }});
  }
  // What a rank that does not write does: take part in every gather.
  void drain() {
    if (!model_done)
      for (const auto& t : model) t.produce();
    if (!trainer_done)
      for (const auto& t : trainer) t.produce();
    model_done = trainer_done = true;
  }
};

}  // namespace

std::string save_checkpoint(const SaveRequest& r) {
  SaveTensors tensors(r);
  if (!r.writer) {
    tensors.drain();
    return "";
  }
  const fs::path run(r.run_dir);
  const std::string name = step_name(r.state->step);
  const fs::path final_dir = run / name;
  const fs::path tmp = run / fmt::format(".{}.tmp-{}", name, ::getpid());
  std::error_code ec;
  fs::create_directories(run, ec);
  if (ec) {
    tensors.drain();
    throw RuntimeError(fmt::format("{}: cannot create the checkpoint folder: {}", run.string(), ec.message()));
  }
  recover_interrupted_saves(run.string());
  try {
    fs::create_directories(tmp);
    tensors.model_done = true;
    safetensors::save_streamed((tmp / "model.safetensors").string(), tensors.model,
                               {{"format", "pt"}, {"producer", "forge " FORGE_SDK_VERSION_STRING}});
    failpoint("checkpoint.after_model");
    tensors.trainer_done = true;
    safetensors::save_streamed((tmp / "trainer.safetensors").string(), tensors.trainer);

    json st;
    st["schema"] = kCheckpointSchema;
    st["forge_version"] = FORGE_SDK_VERSION_STRING;
    st["torch_version"] = fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
    st["step"] = r.state->step;
    st["tokens_seen"] = r.state->tokens_seen;
    st["data"] = {{"epoch", r.state->data.epoch},
                  {"batches_yielded", r.state->data.batches_yielded},
                  {"batch_size", r.state->data.batch_size},
                  {"world", r.state->data.world},
                  {"dataset_size", r.state->data.dataset_size}};
    st["vlm_freeze"] = json::array();
    for (const auto& f : r.state->vlm_freeze) st["vlm_freeze"].push_back({{"module", f.module}, {"frozen", f.frozen}});
    st["world_size"] = r.state->world_size;
    st["plugins"] = json::array();
    if (r.registry && r.config && r.config->vlm) {
      for (auto [kind, name2] : {std::pair<std::string, std::string>{"arch", r.config->vlm->arch},
                                 {"encoder", r.config->vision_encoder->type},
                                 {"adapter", r.config->adapter->type}}) {
        if (const PluginRecord* rec = r.registry->find_record(kind, name2))
          st["plugins"].push_back({{"kind", kind}, {"name", rec->name}, {"version", rec->version}, {"file", rec->path}});
      }
    }
    st["saved_at_unix"] = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
    write_text(tmp / "train_state.json", st.dump(2) + "\n");
    write_text(tmp / "config.toml", "# resolved config of this checkpoint (forge " FORGE_SDK_VERSION_STRING ")\n" +
                                        to_toml(*r.config) + "\n");
    for (const auto& e : fs::directory_iterator(tmp)) sync_path(e.path());
    sync_path(tmp);
    failpoint("checkpoint.before_rename");
    fs::path old;  // a previous copy of this step, moved aside
    if (fs::exists(final_dir)) {
      old = run / fmt::format(".{}.old-{}", name, ::getpid());
      fs::rename(final_dir, old);
      try {
        fs::rename(tmp, final_dir);
      } catch (...) {
        fs::rename(old, final_dir, ec);  // put the previous copy back
        throw;
      }
    } else {
      fs::rename(tmp, final_dir);
    }
    sync_path(run);  // the rename is on disk before the previous copy goes
    if (!old.empty()) util::remove_tree(old.string());
  } catch (const std::exception& e) {
    tensors.drain();  // the other ranks still wait on the gathers
    util::remove_tree(tmp.string());
    throw RuntimeError(fmt::format("saving checkpoint {} failed: {}; earlier checkpoints in {} are untouched",
                                   final_dir.string(), e.what(), run.string()));
  }
  // Point `latest` at it atomically (a new symlink renamed over the old).
  const fs::path link_tmp = run / fmt::format(".latest.tmp-{}", ::getpid());
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(name, link_tmp, ec);
  if (!ec) fs::rename(link_tmp, run / "latest", ec);
  if (!ec) sync_path(run);
  if (ec) throw RuntimeError(fmt::format("{}: cannot update the latest link: {}", run.string(), ec.message()));
  // Retention: keep the newest keep_last_n (never the one just written).
  if (r.keep_last_n > 0) {
    std::vector<std::pair<int64_t, fs::path>> steps;
    for (const auto& e : fs::directory_iterator(run, ec)) {
      int64_t s = step_of(e.path().filename().string());
      if (s >= 0 && e.is_directory()) steps.emplace_back(s, e.path());
    }
    std::sort(steps.begin(), steps.end());
    const auto keep = static_cast<size_t>(r.keep_last_n);
    for (size_t i = 0; i + keep < steps.size(); ++i) {
      if (steps[i].second == final_dir) continue;
      // Renamed out of the step_* names first (atomic), then deleted: a crash part-way through the deletion
      // leaves a hidden folder that the next run removes, never a half-deleted step_* folder.
      const fs::path doomed = run / fmt::format(".{}.del-{}", steps[i].second.filename().string(), ::getpid());
      std::string why;
      fs::rename(steps[i].second, doomed, ec);
      if (ec)
        why = ec.message();
      else
        util::remove_tree(doomed.string(), &why);
      if (!why.empty()) log()->warn("checkpoint.keep_last_n: cannot remove {}: {}", steps[i].second.string(), why);
    }
  }
  return final_dir.string();
}

std::string resolve_checkpoint(const std::string& dir) {
  std::error_code ec;
  const fs::path d(dir);
  if (fs::exists(d / "train_state.json", ec)) return d.string();
  const fs::path latest = d / "latest";
  if (fs::is_symlink(latest, ec) || fs::exists(latest, ec)) {
    fs::path target = fs::read_symlink(latest, ec);
    if (!ec) {
      fs::path full = target.is_absolute() ? target : d / target;
      if (fs::exists(full / "train_state.json", ec)) return full.string();
    }
  }
  int64_t best = -1;
  std::string out;
  if (fs::is_directory(d, ec)) {
    for (const auto& e : fs::directory_iterator(d, ec)) {
      int64_t s = step_of(e.path().filename().string());
      if (s > best && fs::exists(e.path() / "train_state.json", ec)) {
        best = s;
        out = e.path().string();
      }
    }
  }
  return out;
}

TrainState read_train_state(const std::string& step_dir) {
  const std::string path = (fs::path(step_dir) / "train_state.json").string();
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: missing; {} is not a forge checkpoint", path, step_dir));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  try {
    if (j.at("schema").get<int>() != kCheckpointSchema)
      throw FormatError(fmt::format("{}: checkpoint schema {} is not this forge's ({}); docs/abi.md says what changed",
                                    path, j.at("schema").get<int>(), kCheckpointSchema));
    TrainState s;
    s.step = j.at("step").get<int64_t>();
    s.tokens_seen = j.at("tokens_seen").get<int64_t>();
    s.data.epoch = j.at("data").at("epoch").get<int64_t>();
    s.data.batches_yielded = j.at("data").at("batches_yielded").get<int64_t>();
    s.data.batch_size = j["data"].value("batch_size", int64_t{0});
    s.data.world = j["data"].value("world", int64_t{0});
    s.data.dataset_size = j["data"].value("dataset_size", int64_t{0});
    for (const auto& f : j.at("vlm_freeze"))
      s.vlm_freeze.push_back(FreezeSpec{f.at("module").get<std::string>(), f.at("frozen").get<bool>()});
    s.world_size = j.value("world_size", 1);
    return s;
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: malformed ({})", path, e.what()));
  }
}

void load_checkpoint_weights(const std::string& step_dir, torch::nn::Module& model) {
  safetensors::File f((fs::path(step_dir) / "model.safetensors").string());
  load_state_dict(model, TensorSource::from_file(f), /*strict=*/true);
}

void load_checkpoint_trainer(const std::string& step_dir, torch::optim::AdamW& opt, const ParamGroups& groups,
                             const ShardView* shards) {
  safetensors::File f((fs::path(step_dir) / "trainer.safetensors").string());
  load_optimizer_state(opt, groups, f, shards);
  if (f.contains("rng.cpu")) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle to the default generator
    gen.set_state(f.load("rng.cpu"));
  }
}

}  // namespace forge
