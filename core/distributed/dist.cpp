#include "core/distributed/dist.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <set>
#include <cstdlib>

#define USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fmt/format.h>

#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/logging.h"

namespace forge {

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
};

Distributed::~Distributed() = default;

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  try {
    return std::stoi(v);
  } catch (...) {
    throw UserError(fmt::format("environment variable {}=\"{}\" is not an integer", name, v));
  }
}

// "cpu:gloo,cuda:nccl" or one name for both.
std::string backend_for(const std::string& spec, const at::Device& device) {
  const std::string want = device.is_cuda() ? "cuda" : "cpu";
  for (const auto& part : util::split(spec, ',')) {
    auto kv = util::split(part, ':');
    if (kv.size() == 1) return kv[0];
    if (kv.size() == 2 && kv[0] == want) return kv[1];
  }
  throw UserError(fmt::format("distributed.backend = \"{}\" names no backend for {} (e.g. \"cpu:gloo,cuda:nccl\")",
                              spec, want));
}

}  // namespace

std::unique_ptr<Distributed> Distributed::from_env(const DistributedConfig& cfg, const at::Device& device) {
  std::unique_ptr<Distributed> d(new Distributed());
  d->world_ = env_int("WORLD_SIZE", 1);
  d->rank_ = env_int("RANK", 0);
  if (cfg.dp_shard > 0 && cfg.dp_shard != d->world_)
    throw UserError(fmt::format("distributed.dp_shard = {} but {} rank(s) were launched; start forge with "
                                "`forge train --nproc {}` (or set dp_shard = -1)",
                                cfg.dp_shard, d->world_, cfg.dp_shard));
  if (d->world_ <= 1) return d;
  if (d->rank_ < 0 || d->rank_ >= d->world_)
    throw UserError(fmt::format("RANK={} is outside WORLD_SIZE={}", d->rank_, d->world_));
  std::string backend = backend_for(cfg.backend, device);
  if (backend == "nccl") {
    // NCCL's c10d backend is not compiled into this build; Gloo averages the
    // gradients through host memory instead (correct, slower on GPUs).
    log()->warn("distributed.backend asks for nccl, which this forge build does not include; using gloo over host "
                "memory");
    backend = "gloo";
  }
  if (backend != "gloo")
    throw UserError(fmt::format("distributed backend \"{}\" is not known; use gloo", backend));
  const char* addr = std::getenv("MASTER_ADDR");
  const int port = env_int("MASTER_PORT", 29500);
  const auto timeout = std::chrono::seconds(cfg.nccl_timeout_sec);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(port);
  so.isServer = d->rank_ == 0;
  so.numWorkers = d->world_;
  so.timeout = timeout;
  d->impl_ = std::make_unique<Impl>();
  try {
    d->impl_->store = c10::make_intrusive<c10d::TCPStore>(addr ? addr : "127.0.0.1", so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr ? addr : "127.0.0.1"));
    d->impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(d->impl_->store, d->rank_, d->world_, opts);
  } catch (const std::exception& e) {
    throw RuntimeError(fmt::format("rank {} of {}: cannot join the process group at {}:{}: {}", d->rank_, d->world_,
                                   addr ? addr : "127.0.0.1", port, e.what()));
  }
  d->backend_ = backend;
  return d;
}

void Distributed::average(const std::vector<at::Tensor>& tensors) {
  if (world_ <= 1 || tensors.empty()) return;
  // One flat buffer per dtype keeps it to a single collective for fp32 models.
  std::map<at::ScalarType, std::vector<at::Tensor>> by_type;
  for (const auto& t : tensors) by_type[t.scalar_type()].push_back(t);
  for (auto& [type, ts] : by_type) {
    std::vector<at::Tensor> flat{at::cat([&] {
                                      std::vector<at::Tensor> v;
                                      for (const auto& t : ts) v.push_back(t.detach().reshape(-1).to(at::kCPU));
                                      return v;
                                    }())};
    impl_->pg->allreduce(flat)->wait();
    flat[0].div_(static_cast<double>(world_));
    int64_t at = 0;
    for (auto& t : ts) {
      const int64_t n = t.numel();
      t.detach().copy_(flat[0].narrow(0, at, n).view_as(t));
      at += n;
    }
  }
}

double Distributed::sum(double v) {
  if (world_ <= 1) return v;
  std::vector<at::Tensor> t{at::full({1}, v, at::kDouble)};
  impl_->pg->allreduce(t)->wait();
  return t[0].item<double>();
}

double Distributed::max(double v) {
  if (world_ <= 1) return v;
  std::vector<at::Tensor> t{at::full({1}, v, at::kDouble)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  impl_->pg->allreduce(t, o)->wait();
  return t[0].item<double>();
}

void Distributed::broadcast(const std::vector<at::Tensor>& tensors) {
  if (world_ <= 1) return;
  for (const auto& t : tensors) {
    std::vector<at::Tensor> one{t.detach().to(at::kCPU).contiguous()};
    impl_->pg->broadcast(one)->wait();
    t.detach().copy_(one[0]);
  }
}

void Distributed::barrier() {
  if (world_ > 1) impl_->pg->barrier()->wait();
}

// ------------------------------------------------------------ the local launcher

namespace {
int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int port = 29500;
  if (s >= 0 && ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  if (s >= 0) ::close(s);
  return port;
}
}  // namespace

namespace {
volatile sig_atomic_t g_launcher_signal = 0;
extern "C" void on_launcher_signal(int sig) { g_launcher_signal = sig; }
}  // namespace

// The ranks run in their own process group, so a Ctrl-C at the terminal
// reaches only this launcher, which forwards it once to every rank (each then
// stops cleanly and saves; a second Ctrl-C is forwarded again and ends them).
// A rank dies with its launcher (PR_SET_PDEATHSIG), so none is orphaned.
int launch_local_ranks(int nproc, const std::vector<std::string>& args) {
  if (nproc < 1) throw UsageError(fmt::format("--nproc {} must be >= 1", nproc));
  const int port = free_port();
  const pid_t launcher = ::getpid();
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) {
      for (pid_t p : pids) ::kill(p, SIGTERM);
      throw RuntimeError("cannot start a rank (fork failed)");
    }
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != launcher) _exit(1);  // the launcher died before prctl took effect
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  log()->info("started {} local ranks (master 127.0.0.1:{})", nproc, port);

  struct sigaction act {}, old_int{}, old_term{};
  act.sa_handler = on_launcher_signal;  // no SA_RESTART: waitpid returns EINTR
  sigemptyset(&act.sa_mask);
  g_launcher_signal = 0;
  ::sigaction(SIGINT, &act, &old_int);
  ::sigaction(SIGTERM, &act, &old_term);
  std::set<pid_t> live(pids.begin(), pids.end());
  int rc = 0;
  while (!live.empty()) {
    int status = 0;
    pid_t done = ::waitpid(-1, &status, 0);
    if (done < 0) {
      if (errno != EINTR) break;
      if (int sig = g_launcher_signal) {
        g_launcher_signal = 0;
        log()->warn("launcher got signal {}; passing it to {} rank(s)", sig, live.size());
        for (pid_t p : live) ::kill(p, sig);
      }
      continue;
    }
    live.erase(done);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (code != 0 && rc == 0) {
      rc = code;
      log()->error("rank {} exited with code {}; stopping the others",
                   std::find(pids.begin(), pids.end(), done) - pids.begin(), code);
      for (pid_t p : live) ::kill(p, SIGTERM);
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return rc;
}

}  // namespace forge
