// forge on a GPU: the same model gives the CPU's numbers on CUDA, bf16
// training keeps fp32 master weights and optimizer state (D5), generation
// with the KV cache decodes the same tokens, and c10d's NCCL process group
// carries the data-parallel collectives. Skipped (exit 77) without a GPU.
#include <ATen/Context.h>
#include <torch/cuda.h>

#include "core/checkpoint/state_dict.h"
#include "core/distributed/dist.h"
#include "core/distributed/fsdp.h"
#include "core/model/vlm.h"
#include "core/training/trainer.h"
#include "core/util/strings.h"
#include "tests/unit/sharded_step.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::TempDir;
using forge::test::tiny_vlm_toml;

namespace {

const char* kArchs[] = {"joint_decoder", "cross_attention", "mot"};
const at::Device kCuda(at::kCUDA, 0);

// fp32 on the GPU without TF32, so CPU and GPU differ only by summation order.
struct NoTF32 {
  bool cublas = at::globalContext().allowTF32CuBLAS();
  bool cudnn = at::globalContext().allowTF32CuDNN();
  NoTF32() {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
  ~NoTF32() {
    at::globalContext().setAllowTF32CuBLAS(cublas);
    at::globalContext().setAllowTF32CuDNN(cudnn);
  }
};

VLM build(const std::string& arch, const std::string& adapter = "avgpool") {
  LoadOptions o;
  auto cfg = load_config_text(tiny_vlm_toml(arch, adapter), "test.toml", builtin_registry(), o);
  VLM m = build_vlm(cfg.job, builtin_registry());
  torch::NoGradGuard g;  // train-like weights: break the zero-init identities so every part matters
  torch::manual_seed(11);
  for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.05);
  return m;
}

double max_abs(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

}  // namespace

TEST_CASE("a model on CUDA gives the CPU's logits and gradients in fp32", "[cuda][model]") {
  NoTF32 exact;
  for (const char* arch : kArchs) {
    DYNAMIC_SECTION(arch) {
      VLM m = build(arch);
      torch::manual_seed(0);
      at::Tensor px = torch::rand({2, 3, 8, 8}) * 2 - 1;
      at::Tensor ids = torch::randint(0, 64, {2, 12}, torch::kLong);
      VLMOutput cpu = m->forward(px, ids, ids);
      cpu.logits.logsumexp(-1).sum().backward();
      std::map<std::string, at::Tensor> cpu_grads;
      for (const auto& p : m->named_parameters(true))
        if (p.value().grad().defined()) cpu_grads[p.key()] = p.value().grad().clone();
      m->zero_grad();
      m->to(kCuda);
      VLMOutput gpu = m->forward(px.to(kCuda), ids.to(kCuda), ids.to(kCuda));
      CHECK(gpu.logits.device().is_cuda());
      CHECK(max_abs(cpu.logits, gpu.logits) < 1e-4);
      CHECK(at::equal(cpu.targets, gpu.targets.cpu()));
      gpu.logits.logsumexp(-1).sum().backward();
      for (const auto& p : m->named_parameters(true)) {
        INFO(p.key());
        REQUIRE(p.value().grad().defined() == (cpu_grads.count(p.key()) == 1));
        if (cpu_grads.count(p.key())) CHECK(max_abs(cpu_grads.at(p.key()), p.value().grad()) < 1e-4);
      }
    }
  }
}

TEST_CASE("greedy generation with the KV cache decodes the CPU's tokens on CUDA", "[cuda][generate]") {
  NoTF32 exact;
  for (const char* arch : kArchs) {
    DYNAMIC_SECTION(arch) {
      VLM m = build(arch);
      torch::manual_seed(4);
      at::Tensor px = torch::rand({2, 3, 8, 8}) * 2 - 1;
      at::Tensor prompt = torch::randint(0, 64, {2, 3}, torch::kLong);
      GenerateOptions o;
      o.max_new_tokens = 12;
      at::Tensor cpu = generate(*m, px, prompt, o);
      m->to(kCuda);
      at::Tensor gpu = generate(*m, px.to(kCuda), prompt.to(kCuda), o);
      CHECK(gpu.device().is_cuda());
      CHECK(at::equal(cpu, gpu.cpu()));
      o.use_cache = false;  // and the cache agrees with re-running the sequence on the GPU
      CHECK(at::equal(gpu, generate(*m, px.to(kCuda), prompt.to(kCuda), o)));
    }
  }
}

TEST_CASE("the random stub gives the same tokens on CUDA as on the CPU", "[cuda][encoder]") {
  LoadOptions o;
  auto cfg = load_config_text(tiny_vlm_toml(), "test.toml", builtin_registry(), o);
  VLM m = build_vlm(cfg.job, builtin_registry());
  torch::manual_seed(2);
  at::Tensor px = torch::rand({3, 3, 16, 16});
  at::Tensor cpu = m->vision_encoder->forward(px);
  at::Tensor gpu = m->vision_encoder->forward(px.to(kCuda));
  CHECK(gpu.device().is_cuda());
  CHECK(at::equal(cpu, gpu.cpu()));
}

TEST_CASE("bf16 training on CUDA keeps fp32 master weights and optimizer state (D5)", "[cuda][train]") {
  for (const char* arch : kArchs) {
    DYNAMIC_SECTION(arch) {
      TempDir d;
      LoadOptions lo;
      lo.overrides = {"--model.dim=64", "--model.n_layers=2", "--vision_encoder.feature_dim=64",
                      "--vision_encoder.num_layers=1", "--train.max_steps=60", "--train.device=cuda",
                      "--train.mixed_precision=bf16", "--optimizer.lr=2e-3", "--scheduler.warmup_steps=10",
                      "--eval.interval=100000", "--eval.steps=4", "--checkpoint.interval=100000",
                      "--metrics.log_interval=1000", "--vlm.arch=" + std::string(arch), "--checkpoint.dir=" + d.str()};
      if (std::string(arch) == "cross_attention") lo.overrides.push_back("--vlm.cross_attention_every_n_layers=1");
      auto cfg = load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), lo);
      TrainOptions to;
      to.handle_signals = false;
      TrainSummary s = train(cfg, builtin_registry(), to);
      REQUIRE(s.losses.size() == 60);
      for (double l : s.losses) REQUIRE(std::isfinite(l));
      double first = 0, last = 0;
      for (int i = 0; i < 5; ++i) {
        first += s.losses[i] / 5;
        last += s.losses[s.losses.size() - 1 - i] / 5;
      }
      CHECK(last < 0.6 * first);  // it learns under autocast
      // The checkpoint holds fp32 weights and fp32 AdamW moments.
      safetensors::File model(s.last_checkpoint + "/model.safetensors");
      for (const auto& t : model.tensors()) {
        INFO(t.name);
        CHECK(model.load(t.name).scalar_type() == at::kFloat);
      }
      safetensors::File trainer(s.last_checkpoint + "/trainer.safetensors");
      int64_t moments = 0;
      for (const auto& t : trainer.tensors()) {
        if (!util::ends_with(t.name, ".exp_avg") && !util::ends_with(t.name, ".exp_avg_sq")) continue;
        INFO(t.name);
        CHECK(trainer.load(t.name).scalar_type() == at::kFloat);
        ++moments;
      }
      CHECK(moments > 0);
      REQUIRE(s.final_eval);
      CHECK(std::isfinite(s.final_eval->loss));
    }
  }
}

TEST_CASE("c10d's NCCL process group carries the data-parallel collectives", "[cuda][dist]") {
  REQUIRE(Distributed::has_nccl());  // a CUDA build must have found nccl.h
  DistributedConfig cfg;              // "cpu:gloo,cuda:nccl"
  auto d = Distributed::connect(cfg, kCuda, 0, 1, "127.0.0.1", 29611);
  CHECK(d->backend() == "nccl");
  at::Tensor a = torch::arange(10, torch::TensorOptions().dtype(at::kFloat).device(kCuda));
  at::Tensor b = torch::ones({3, 2}, torch::TensorOptions().dtype(at::kFloat).device(kCuda)) * 4;
  at::Tensor a0 = a.clone(), b0 = b.clone();
  d->all_reduce_sum(a);  // one rank: the sum is the tensor itself
  d->all_reduce_sum(b);
  CHECK(at::equal(a, a0));
  CHECK(at::equal(b, b0));
  CHECK(d->sum(2.5) == 2.5);
  CHECK(d->max(-1.0) == -1.0);
  d->broadcast({a});
  CHECK(at::equal(a, a0));
  d->barrier();
  // NCCL is for GPUs: asking for it on the CPU is a config error, not a hang.
  DistributedConfig nccl_everywhere;
  nccl_everywhere.backend = "nccl";
  CHECK_THROWS_WITH(Distributed::connect(nccl_everywhere, at::Device(at::kCPU), 0, 1, "127.0.0.1", 29612),
                    Catch::Contains("NCCL needs CUDA devices"));
}

TEST_CASE("a model built on the CPU and sharded onto the GPU trains as the same model on the GPU", "[cuda][dist]") {
  // World 1 over NCCL: every gather and reduce-scatter runs for real on the GPU, the whole weights are never
  // moved there (the parameters become shapes on the GPU whose memory exists only while gathered), and a
  // forward and backward through sharded layers and tower blocks give the unsharded model's numbers.
  NoTF32 exact;
  for (const std::string arch : {"joint_decoder", "cross_attention"}) {
    INFO(arch);
    VLM plain = build(arch), sharded = build(arch);
    plain->to(kCuda);
    for (VLM* m : {&plain, &sharded}) {
      for (auto& p : (*m)->parameters(true)) p.requires_grad_(true);
      (*m)->train();
      (*m)->transformer->set_activation_checkpointing(arch == "cross_attention" ? 1 : 0);
    }
    auto d = Distributed::connect(DistributedConfig{}, kCuda, 0, 1, "127.0.0.1", 29613 + (arch == "cross_attention"));
    std::vector<std::string> prefixes;
    for (size_t i = 0; i < sharded->transformer->layer_list().size(); ++i)
      prefixes.push_back("transformer.layers." + std::to_string(i) + ".");
    FullyShardedModel fsdp(*sharded, prefixes, *d, nullptr, kCuda);
    std::vector<std::shared_ptr<ParamUnit>> units;
    for (size_t i = 0; i < fsdp.units(); ++i) units.push_back(fsdp.unit(i));
    sharded->transformer->set_layer_units(units);
    for (const auto& p : sharded->parameters(true)) {
      CHECK(p.device() == kCuda);
      CHECK(p.storage().nbytes() == 0);
    }
    at::Tensor px = at::rand({2, 3, 16, 16}).to(kCuda);
    at::Tensor ids = at::randint(0, 64, {2, 12}, at::TensorOptions().dtype(at::kLong)).to(kCuda);
    auto [want, got] = forge::test::plain_and_sharded_step(plain, sharded, fsdp, px, ids);
    CHECK(max_abs(got, want) < 1e-6);
    for (const auto& item : plain->named_parameters(true)) {
      INFO(item.key());
      at::Tensor p = sharded->named_parameters(true)[item.key()];  // a copy: the dict is a temporary
      at::Tensor g = fsdp.shard_of(p).grad();
      REQUIRE(g.defined());
      CHECK(g.device() == kCuda);
      CHECK(max_abs(g, item.value().grad().reshape({-1})) < 1e-5);
    }
  }
}
