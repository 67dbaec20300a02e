// Faults a long run meets, forced for real: SIGKILL at random moments while
// forge checkpoints every step (20 times), a disk that fills up (a small
// tmpfs), a checkpoint folder that becomes read-only, and a metrics file that
// cannot be opened. Each time: what forge says, its exit code, and that the
// last checkpoint still loads with nothing half-written left behind.
// Mounting a tmpfs needs root, or password-less sudo (as setup.sh does).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "core/checkpoint/checkpoint.h"
#include "core/model/vlm.h"
#include "core/training/run_files.h"
#include "core/util/files.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::string kTiny =
    " --model.dim=32 --model.n_layers=1 --vision_encoder.feature_dim=32 --vision_encoder.image_size=16"
    " --vision_encoder.patch_size=8 --train.batch_size=4 --data.shapes_heldout_samples=16 --eval.enabled=false"
    " --data.num_workers=1 --log-level=warn";

std::string train_cmd(const std::string& run_dir, const std::string& extra) {
  return std::string(FORGE_BIN) + " train " FORGE_SOURCE_DIR "/configs/shapes.toml" + kTiny +
         " --checkpoint.dir=" + run_dir + extra;
}

// A tmpfs of `kib` KiB at `dir`, unmounted when it goes out of scope.
// Mounting needs root; a non-root user with password-less sudo (as setup.sh
// accepts) mounts through sudo.
struct Tmpfs {
  std::string dir;
  std::string as_root = ::geteuid() == 0 ? "" : "sudo -n ";
  Tmpfs(const std::string& d, int kib) : dir(d) {
    fs::create_directories(dir);
    auto r = forge::test::run(fmt::format("{}mount -t tmpfs -o size={}k,mode=1777 tmpfs {}", as_root, kib, dir));
    INFO("mounting a tmpfs needs root or password-less sudo: " << r.output);
    REQUIRE(r.code == 0);
  }
  void read_only() const { REQUIRE(forge::test::run(as_root + "mount -o remount,ro " + dir).code == 0); }
  ~Tmpfs() { forge::test::run(as_root + "umount -l " + dir); }
};

// Every step_* folder is complete, `latest` names one, and its weights load
// into the model its config builds. Returns the step `latest` holds (-1: no
// checkpoint yet).
int64_t check_run_dir(const std::string& run_dir) {
  for (const auto& e : fs::directory_iterator(run_dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step_", 0) != 0) continue;
    INFO(e.path());
    for (const char* f : {"model.safetensors", "trainer.safetensors", "train_state.json", "config.toml"})
      CHECK(fs::is_regular_file(e.path() / f));
    CHECK_NOTHROW(read_train_state(e.path().string()));
  }
  const std::string latest = resolve_checkpoint(run_dir);
  if (latest.empty()) {
    CHECK_FALSE(fs::exists(fs::path(run_dir) / "latest"));
    return -1;
  }
  auto cfg = load_config(latest + "/config.toml", builtin_registry());
  VLM model = build_vlm(cfg.job, builtin_registry());
  CHECK_NOTHROW(load_checkpoint_weights(latest, *model));
  return read_train_state(latest).step;
}

// Runs the interrupted run on to step `to`: it must resume, finish, and leave a loadable checkpoint of that step.
void resume_to(const std::string& run_dir, int64_t to, const std::string& extra) {
  auto r = forge::test::run(train_cmd(run_dir, extra + " --train.max_steps=" + std::to_string(to)));
  INFO(r.output);
  CHECK(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("(resumed)"));
  CHECK(check_run_dir(run_dir) == to);
}

bool has_temporaries(const std::string& run_dir) {
  for (const auto& e : fs::directory_iterator(run_dir)) {
    const std::string name = e.path().filename().string();
    for (const char* mark : {".tmp-", ".old-", ".del-"})
      if (name.find(mark) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("SIGKILL at 20 random moments while checkpointing every step: latest always loads, the run resumes",
          "[faults][train]") {
  TempDir d;
  const std::string run_dir = d.str() + "/run";
  std::mt19937 rng(2026);  // fixed: a failure is reproducible
  std::uniform_int_distribution<int> wait_ms(300, 2500);
  int64_t last_step = -1;
  int with_checkpoint = 0;
  for (int i = 0; i < 20; ++i) {
    const std::string cmd = "exec " + train_cmd(run_dir, " --checkpoint.interval=1 --checkpoint.keep_last_n=2 "
                                                         "--train.max_steps=100000 --metrics.log_interval=1") +
                            " > " + d.str() + "/log.txt 2>&1";
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms(rng)));
    REQUIRE(kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    INFO("kill " << i);
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
    if (!fs::exists(run_dir)) continue;
    const int64_t step = check_run_dir(run_dir);
    CHECK(step >= last_step);  // never a checkpoint older than one that was already there
    if (step >= 0) ++with_checkpoint;
    last_step = std::max(last_step, step);
  }
  CHECK(with_checkpoint >= 15);
  // The run resumes from the last checkpoint and finishes, and the leftovers of interrupted saves are gone.
  resume_to(run_dir, last_step + 2, " --checkpoint.interval=1 --checkpoint.keep_last_n=2");
  CHECK_FALSE(has_temporaries(run_dir));
}

TEST_CASE("a full disk: the save fails with the reason, the previous checkpoint loads, nothing partial is left",
          "[faults][train]") {
  TempDir d;
  Tmpfs disk(d.str() + "/disk", 3000);  // room for 3 checkpoints of this model (960 KiB each)
  const std::string run_dir = disk.dir + "/run";
  auto r = forge::test::run(train_cmd(run_dir, " --checkpoint.interval=1 --checkpoint.keep_last_n=0 "
                                               "--train.max_steps=1000 --metrics.log_interval=1"));
  INFO(r.output);
  CHECK(r.code == 1);
  CHECK_THAT(r.output, Catch::Contains("No space left on device") && Catch::Contains("saving checkpoint") &&
                           Catch::Contains("earlier checkpoints in " + run_dir + " are untouched"));
  const int64_t step = check_run_dir(run_dir);
  CHECK(step >= 1);
  CHECK_FALSE(has_temporaries(run_dir));
  // With room again (the oldest checkpoints removed), the run resumes from that checkpoint.
  for (const auto& e : fs::directory_iterator(run_dir))
    if (e.path().filename().string().rfind("step_", 0) == 0 && e.path() != fs::path(resolve_checkpoint(run_dir)))
      REQUIRE(util::remove_tree(e.path().string()));  // not std::filesystem::remove_all (core/util/files.h)
  resume_to(run_dir, step + 2, " --checkpoint.interval=1 --checkpoint.keep_last_n=1");
}

TEST_CASE("a read-only checkpoint folder stops forge before the first step, and its checkpoint still loads",
          "[faults][train]") {
  TempDir d;
  Tmpfs disk(d.str() + "/disk", 8192);
  const std::string run_dir = disk.dir + "/run";
  REQUIRE(forge::test::run(train_cmd(run_dir, " --train.max_steps=2")).code == 0);
  disk.read_only();
  auto r = forge::test::run(train_cmd(run_dir, " --train.max_steps=4"));
  INFO(r.output);
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains("checkpoint.dir = \"" + run_dir + "\": cannot write there (Read-only file system)"));
  CHECK(check_run_dir(run_dir) == 2);
}

TEST_CASE("a metrics file that cannot be opened is named before training starts", "[faults][train]") {
  TempDir d;
  const std::string run_dir = d.str() + "/run";
  fs::create_directories(fs::path(run_dir) / "metrics.jsonl");  // a folder where the file should be
  auto r = forge::test::run(train_cmd(run_dir, " --train.max_steps=2"));
  INFO(r.output);
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains(run_dir + "/metrics.jsonl: cannot open the metrics file for writing") &&
                           Catch::Contains("metrics.jsonl = false"));
  CHECK(resolve_checkpoint(run_dir).empty());
  CHECK(forge::test::run(train_cmd(run_dir, " --train.max_steps=2 --metrics.jsonl=false")).code == 0);
}

TEST_CASE("a metrics line that cannot be written warns once and never stops training", "[faults]") {
  MetricsLog log("/dev/full", nullptr);  // every write: ENOSPC
  CHECK_NOTHROW(log.write(nlohmann::json{{"step", 1}, {"loss", 2.5}}));
  CHECK_NOTHROW(log.write(nlohmann::json{{"step", 2}, {"loss", 2.4}}));
  CHECK(log.failed_writes() == 2);
  MetricsLog off("", nullptr);
  off.write(nlohmann::json{{"step", 1}});
  CHECK(off.failed_writes() == 0);
}
