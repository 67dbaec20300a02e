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
#include <cstring>

#ifndef USE_C10D_GLOO  // LibTorch's CMake target usually defines it already
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fmt/format.h>

#include "core/distributed/nccl.h"
#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/logging.h"

namespace forge {

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  at::Device device{at::kCPU};  // where collectives run: the GPU for NCCL, host memory for Gloo
  std::string addr;              // the rendezvous host (Gloo binds its device to it)

  ~Impl() {
    if (!pg) return;
    try {
      pg->shutdown();  // NCCL frees its communicators here, not in a destructor at exit
    } catch (const std::exception& e) {
      log()->warn("closing the process group: {}", e.what());
    }
  }
};

Distributed::~Distributed() = default;

void Distributed::finish_work(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const {
  try {
    work->wait();
  } catch (const std::exception& e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    throw RuntimeError(fmt::format("rank {} of {}: {} did not complete: a rank has died or hangs (collectives wait "
                                   "up to distributed.nccl_timeout_sec = {} s) [{}]",
                                   rank_, world_, what, timeout_sec_, why));
  }
}

bool Distributed::has_nccl() { return detail::nccl_available(); }

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

// The process group over `store` for `backend` ("nccl" on `device`, else Gloo bound to `addr`).
c10::intrusive_ptr<c10d::Backend> make_group(const std::string& backend, const c10::intrusive_ptr<c10d::Store>& store,
                                             int rank, int world, std::chrono::milliseconds timeout,
                                             const at::Device& device, const std::string& addr) {
  if (backend == "nccl") return detail::make_nccl_backend(store, rank, world, timeout, device);
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
}

}  // namespace

int64_t resolved_dp_shard(const DistributedConfig& cfg, int64_t world) {
  if (cfg.dp_replicate < 1)
    throw UserError(fmt::format("distributed.dp_replicate = {}: must be >= 1", cfg.dp_replicate));
  if (cfg.dp_shard == -1) {
    if (world % cfg.dp_replicate != 0)
      throw UserError(fmt::format("distributed.dp_replicate = {} does not divide the {} launched rank(s); choose a "
                                  "divisor of {} or launch a multiple of {}",
                                  cfg.dp_replicate, world, world, cfg.dp_replicate));
    return world / cfg.dp_replicate;
  }
  if (cfg.dp_shard * cfg.dp_replicate != world)
    throw UserError(fmt::format("distributed.dp_shard = {} × dp_replicate = {} is {} rank(s), but {} were launched; "
                                "start forge with `forge train --nproc {}` or set dp_shard = -1",
                                cfg.dp_shard, cfg.dp_replicate, cfg.dp_shard * cfg.dp_replicate, world,
                                cfg.dp_shard * cfg.dp_replicate));
  return cfg.dp_shard;
}

std::unique_ptr<Distributed> Distributed::from_env(const DistributedConfig& cfg, const at::Device& device) {
  const int world = env_int("WORLD_SIZE", 1);
  const int rank = env_int("RANK", 0);
  resolved_dp_shard(cfg, world);  // a layout the world cannot honour fails before any connection
  if (world <= 1) return std::unique_ptr<Distributed>(new Distributed());
  const char* addr = std::getenv("MASTER_ADDR");
  return connect(cfg, device, rank, world, addr ? addr : "127.0.0.1", env_int("MASTER_PORT", 29500));
}

std::unique_ptr<Distributed> Distributed::connect(const DistributedConfig& cfg, const at::Device& device, int rank,
                                                  int world, const std::string& addr, int port) {
  if (world < 1 || rank < 0 || rank >= world)
    throw UserError(fmt::format("RANK={} is outside WORLD_SIZE={}", rank, world));
  std::string backend = backend_for(cfg.backend, device);
  if (backend == "nccl" && !device.is_cuda())
    throw UserError(fmt::format("distributed.backend = \"{}\" asks for nccl on {}; NCCL needs CUDA devices, use gloo "
                                "on CPUs (\"cpu:gloo,cuda:nccl\")",
                                cfg.backend, device.str()));
  if (backend == "nccl" && !detail::nccl_available()) {
    log()->warn("distributed.backend asks for nccl, which this forge build does not include (configured without "
                "nccl.h); using gloo over host memory");
    backend = "gloo";
  }
  if (backend != "gloo" && backend != "nccl")
    throw UserError(fmt::format("distributed.backend names \"{}\"; forge knows gloo and nccl", backend));
  const auto timeout = std::chrono::milliseconds(std::chrono::seconds(cfg.nccl_timeout_sec));
  std::unique_ptr<Distributed> d(new Distributed());
  d->world_ = world;
  d->rank_ = rank;
  d->timeout_sec_ = cfg.nccl_timeout_sec;
  d->impl_ = std::make_unique<Impl>();
  d->impl_->device = backend == "nccl" ? device : at::Device(at::kCPU);
  d->impl_->addr = addr;
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(port);
  so.isServer = rank == 0;
  so.numWorkers = world;
  so.timeout = timeout;
  try {
    d->impl_->store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    d->impl_->pg = make_group(backend, d->impl_->store, rank, world, timeout, device, addr);
  } catch (const forge::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw RuntimeError(fmt::format("rank {} of {}: cannot join the {} process group at {}:{}: {}", rank, world,
                                   backend, addr, port, e.what()));
  }
  d->backend_ = backend;
  return d;
}

Distributed::Pending::~Pending() = default;

namespace {
// A launched collective on `staged` (the caller's tensor, or its copy where the backend wants it: host
// memory for Gloo); wait() finishes it and copies the result back into the caller's tensor.
class PendingCollective final : public Distributed::Pending {
 public:
  PendingCollective(const Distributed& d, c10::intrusive_ptr<c10d::Work> w, at::Tensor staged, at::Tensor user,
                    const char* what)
      : d_(d), work_(std::move(w)), staged_(std::move(staged)), user_(std::move(user)), what_(what) {}
  void wait() override {
    if (!work_) return;
    d_.finish_work(work_, what_);
    work_.reset();
    if (!staged_.is_same(user_)) user_.copy_(staged_);
  }

 private:
  const Distributed& d_;
  c10::intrusive_ptr<c10d::Work> work_;
  at::Tensor staged_, user_;
  const char* what_;
};

// A handle for a world without a process group: nothing to wait for.
class DonePending final : public Distributed::Pending {
 public:
  void wait() override {}
};

// `t` where the backend runs: itself, or a copy (with its values when `values`).
at::Tensor staged(const at::Tensor& t, const at::Device& d, bool values) {
  if (t.device() == d) return t;
  return values ? t.to(d) : at::empty(t.sizes(), t.options().device(d));
}
}  // namespace

std::unique_ptr<Distributed> Distributed::subgroup(const std::vector<int>& ranks, const std::string& name) const {
  auto me = std::find(ranks.begin(), ranks.end(), rank_);
  if (me == ranks.end())
    throw InvalidArgument(fmt::format("process group '{}': rank {} is not one of its ranks", name, rank_));
  std::unique_ptr<Distributed> d(new Distributed());
  d->rank_ = static_cast<int>(me - ranks.begin());
  d->world_ = static_cast<int>(ranks.size());
  d->timeout_sec_ = timeout_sec_;
  d->backend_ = backend_;
  if (!impl_) return d;
  d->impl_ = std::make_unique<Impl>();
  d->impl_->device = impl_->device;
  d->impl_->addr = impl_->addr;
  d->impl_->store = c10::make_intrusive<c10d::PrefixStore>("forge/" + name, impl_->store);
  const auto timeout = std::chrono::milliseconds(std::chrono::seconds(timeout_sec_));
  try {
    d->impl_->pg = make_group(backend_, d->impl_->store, d->rank_, d->world_, timeout, impl_->device, impl_->addr);
  } catch (const std::exception& e) {
    throw RuntimeError(fmt::format("rank {}: cannot build the process group '{}' over ranks {}: {}", rank_, name,
                                   fmt::join(ranks, ","), e.what()));
  }
  return d;
}

void Distributed::all_gather(const at::Tensor& out, const at::Tensor& in) { all_gather_async(out, in)->wait(); }

std::unique_ptr<Distributed::Pending> Distributed::all_gather_async(const at::Tensor& out, const at::Tensor& in) {
  if (out.numel() != in.numel() * world_)
    throw InvalidArgument(fmt::format("all_gather: {} elements out for {} in over {} ranks", out.numel(), in.numel(),
                                      world_));
  if (!impl_) {
    out.copy_(in.reshape(out.sizes()));
    return std::make_unique<DonePending>();
  }
  at::Tensor o = staged(out, impl_->device, false);
  at::Tensor i = staged(in.contiguous(), impl_->device, true);
  auto work = impl_->pg->_allgather_base(o, i);
  return std::make_unique<PendingCollective>(*this, std::move(work), o, out, "a parameter all-gather");
}

void Distributed::reduce_scatter_sum(const at::Tensor& out, const at::Tensor& in) {
  if (in.numel() != out.numel() * world_)
    throw InvalidArgument(fmt::format("reduce_scatter: {} elements in for {} out over {} ranks", in.numel(),
                                      out.numel(), world_));
  if (!impl_) {
    out.copy_(in.reshape(out.sizes()));
    return;
  }
  at::Tensor o = staged(out, impl_->device, false);
  c10d::ReduceScatterOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  at::Tensor i = staged(in.contiguous(), impl_->device, true);
  auto work = impl_->pg->_reduce_scatter_base(o, i, opts);
  PendingCollective(*this, std::move(work), o, out, "a gradient reduce-scatter").wait();
}

void Distributed::all_reduce_sum(const at::Tensor& t) { all_reduce_sum_async(t, "an all-reduce")->wait(); }

std::unique_ptr<Distributed::Pending> Distributed::all_reduce_sum_async(const at::Tensor& t, const char* what) {
  if (!impl_) return std::make_unique<DonePending>();
  std::vector<at::Tensor> one{staged(t, impl_->device, true)};
  auto work = impl_->pg->allreduce(one);
  return std::make_unique<PendingCollective>(*this, std::move(work), one[0], t, what);
}

double Distributed::reduce(double v, bool take_max) {
  if (!impl_) return v;
  std::vector<at::Tensor> t{at::full({1}, v, at::TensorOptions().dtype(at::kDouble).device(impl_->device))};
  c10d::AllreduceOptions o;
  o.reduceOp = take_max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  finish_work(impl_->pg->allreduce(t, o), "an all-reduce");
  return t[0].item<double>();
}

double Distributed::sum(double v) { return reduce(v, false); }

double Distributed::max(double v) { return reduce(v, true); }

void Distributed::broadcast(const std::vector<at::Tensor>& tensors) {
  if (!impl_) return;
  for (const auto& t : tensors) {
    std::vector<at::Tensor> one{t.detach().to(impl_->device).contiguous()};
    finish_work(impl_->pg->broadcast(one), "a broadcast");
    t.detach().copy_(one[0]);
  }
}

void Distributed::barrier() {
  if (impl_) finish_work(impl_->pg->barrier(), "a barrier");
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
  auto rank_of = [&](pid_t p) { return std::find(pids.begin(), pids.end(), p) - pids.begin(); };
  int rc = 0;
  // Once a rank has failed, the others get kStopGrace to exit after SIGTERM; one that does not (stuck, or
  // stopped) is killed and named.
  constexpr auto kStopGrace = std::chrono::seconds(10);
  std::chrono::steady_clock::time_point stop_deadline{};
  while (!live.empty()) {
    int status = 0;
    pid_t done = ::waitpid(-1, &status, rc == 0 ? 0 : WNOHANG);
    if (done == 0) {  // stopping, and no rank has exited yet
      if (std::chrono::steady_clock::now() > stop_deadline) {
        for (pid_t p : live) {
          log()->error("rank {} did not exit within {} s of being told to stop (it hangs); killing it", rank_of(p),
                       kStopGrace.count());
          ::kill(p, SIGKILL);
        }
        stop_deadline = std::chrono::steady_clock::time_point::max();
      }
      ::usleep(50 * 1000);
      continue;
    }
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
    const bool signalled = WIFSIGNALED(status);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (signalled ? WTERMSIG(status) : 0);
    if (code != 0 && rc == 0) {
      rc = code;
      log()->error("rank {} {}; stopping the others", rank_of(done),
                   signalled ? fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)))
                             : fmt::format("exited with code {}", code));
      for (pid_t p : live) ::kill(p, SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() + kStopGrace;
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return rc;
}

}  // namespace forge
