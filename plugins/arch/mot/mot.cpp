// arch/mot: [vlm] arch = "mot" (Mixture-of-Transformers).
//
// One residual stream [image tokens | text tokens], but every layer keeps a
// separate copy of its weights per modality: attention norm, Q/K/V/O
// projections (and QK norms), MLP norm and MLP, plus a final norm per
// modality. Positions are split by place (the first N are the image); each
// modality's tokens go only through its own weights, then one causal
// attention runs over the whole sequence. RoPE restarts per modality: image
// positions use rows 0..N-1, text rows 0..T-1. o_proj and mlp.down_proj start
// at zero, so a fresh MoT block is an exact identity. The shared final norm
// exists only so checkpoints stay key-compatible; it is frozen and unused.
//
// Keys: transformer.layers.<i>.attn_norm.<m>.weight,
//       transformer.layers.<i>.attn.{q,k,v,o}_proj.<m>.weight,
//       transformer.layers.<i>.attn.{q,k}_norm.<m>.weight (qk_norm),
//       transformer.layers.<i>.mlp_norm.<m>.weight, transformer.layers.<i>.mlp.<m>.*,
//       transformer.mot_norms.<m>.weight.
//
// Warm start (D4): with mot_warm_start_from_text, a fresh run copies a dense
// decoder's weights (a forge checkpoint or any safetensors file with the
// reference's key names) into every modality's copy.
#include <filesystem>

#include <fmt/format.h>

#include "forge/forge.h"

namespace forge::plugins::arch::mot {

struct Config final : VLMConfig {
  std::vector<std::string> modalities{"image", "text"};
  int64_t image_n_heads = 0;
  int64_t image_n_kv_heads = 0;
  bool warm_start_from_text = false;
  std::string warm_start_path;

  void visit(ConfigVisitor& v) override {
    VLMConfig::visit(v);
    v.field("mot_modalities", modalities,
            "Modalities with their own weights. forge places the image first and the text after it, so the list must "
            "be exactly image and text (in either order).");
    v.field("mot_image_n_heads", image_n_heads, "Image attention heads; 0: model.n_heads. Must equal the text's.",
            Bounds::non_negative());
    v.field("mot_image_n_kv_heads", image_n_kv_heads,
            "Image key/value heads; 0: model.n_kv_heads. Must equal the text's.", Bounds::non_negative());
    v.field("mot_warm_start_from_text", warm_start_from_text,
            "Copy a dense decoder's weights into every modality at the start of a fresh run (D4).");
    v.field("mot_warm_start_path", warm_start_path,
            "The dense weights: a forge checkpoint folder or a .safetensors file with KempnerForge key names.");
    std::vector<std::string> sorted = modalities;
    std::sort(sorted.begin(), sorted.end());
    v.require(sorted == std::vector<std::string>{"image", "text"}, "mot_modalities",
              fmt::format("got [{}]; forge's MoT supports exactly the modalities image and text",
                          fmt::join(modalities, ", ")));
    v.require(!warm_start_from_text || !warm_start_path.empty(), "mot_warm_start_path",
              "mot_warm_start_from_text = true needs mot_warm_start_path");
  }
  StringListMap arch_module_patterns() const override {
    return {{"mot", {"transformer.layers", "transformer.layers.*"}}};
  }
};

const char* const kImage = "image";
const char* const kText = "text";

// Per-modality linear layers and norms keyed by modality name.
template <class M>
torch::nn::ModuleDict dict_of(const std::vector<std::string>& names, const std::function<M()>& make,
                              std::vector<M>& keep) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> items;
  for (const auto& n : names) {
    M m = make();
    keep.push_back(m);
    items.emplace_back(n, m.ptr());
  }
  return torch::nn::ModuleDict(items);
}

// The image positions [0, n_image) and the text positions after them of a (B, S, ...) tensor. One split, not two
// narrows: its backward writes the gradient once, where each narrow's would zero a full-size gradient and copy in.
std::vector<at::Tensor> split_modalities(const at::Tensor& t, int64_t n_image) {
  return t.split_with_sizes({n_image, t.size(1) - n_image}, 1);
}

// Index 0 = image, 1 = text in every per-modality vector below.
class MoTAttentionImpl : public torch::nn::Module {
 public:
  MoTAttentionImpl(const ModelConfig& m, const std::vector<std::string>& order) : heads_(m.n_heads),
      kv_heads_(m.kv_heads()), hd_(m.head_dim()) {
    auto lin = [](int64_t i, int64_t o, bool bias) {
      return std::function<torch::nn::Linear()>(
          [=] { return torch::nn::Linear(torch::nn::LinearOptions(i, o).bias(bias)); });
    };
    std::vector<torch::nn::Linear> q, k, v, o;
    register_module("q_proj", dict_of(order, lin(m.dim, heads_ * hd_, m.qkv_bias), q));
    register_module("k_proj", dict_of(order, lin(m.dim, kv_heads_ * hd_, m.qkv_bias), k));
    register_module("v_proj", dict_of(order, lin(m.dim, kv_heads_ * hd_, m.qkv_bias), v));
    register_module("o_proj", dict_of(order, lin(heads_ * hd_, m.dim, m.o_bias), o));
    std::vector<nn::Norm> qn, kn;
    if (m.qk_norm) {
      std::function<nn::Norm()> mk = [&] { return nn::Norm(hd_, "rmsnorm", m.qk_norm_eps); };
      register_module("q_norm", dict_of(order, mk, qn));
      register_module("k_norm", dict_of(order, mk, kn));
    }
    for (const char* name : {kImage, kText}) {
      size_t i = std::find(order.begin(), order.end(), name) - order.begin();
      q_.push_back(q[i]);
      k_.push_back(k[i]);
      v_.push_back(v[i]);
      o_.push_back(o[i]);
      if (m.qk_norm) {
        qn_.push_back(qn[i]);
        kn_.push_back(kn[i]);
      }
    }
  }

  // parts[0]: image rows, parts[1]: text rows of this chunk (either may be empty).
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& parts, const DecoderStep& step, nn::LayerKV* kv) {
    std::vector<at::Tensor> qs, ks, vs;
    for (size_t m = 0; m < 2; ++m) {
      const at::Tensor& x = parts[m];
      if (x.size(1) == 0) continue;
      const int64_t B = x.size(0), S = x.size(1);
      const auto qkv = nn::projections(x, {q_[m].get(), k_[m].get(), v_[m].get()});  // one GEMM under autocast
      at::Tensor q = qkv[0].view({B, S, heads_, hd_}), k = qkv[1].view({B, S, kv_heads_, hd_});
      if (!qn_.empty()) {
        q = qn_[m](q);
        k = kn_[m](k);
      }
      qs.push_back(q);
      ks.push_back(k);
      vs.push_back(qkv[2].view({B, S, kv_heads_, hd_}));
    }
    at::Tensor q = nn::apply_rope(at::cat(qs, 1).transpose(1, 2), step.attention.cos, step.attention.sin);
    at::Tensor k = nn::apply_rope(at::cat(ks, 1).transpose(1, 2), step.attention.cos, step.attention.sin);
    at::Tensor v = at::cat(vs, 1).transpose(1, 2);
    at::Tensor o = nn::causal_attention(q, k, v, step.attention, kv);
    o = o.transpose(1, 2).reshape({o.size(0), o.size(2), heads_ * hd_});
    const std::vector<at::Tensor> os = split_modalities(o, parts[0].size(1));
    std::vector<at::Tensor> out;
    for (size_t m = 0; m < 2; ++m)  // o_proj through packed_linear: fp32 weight gradients under CPU bf16 autocast
      out.push_back(parts[m].size(1) == 0 ? parts[m] : nn::packed_linear(os[m], {o_[m].get()}));
    return out;
  }

  std::vector<torch::nn::Linear> q_, k_, v_, o_;
  std::vector<nn::Norm> qn_, kn_;

 private:
  int64_t heads_, kv_heads_, hd_;
};
TORCH_MODULE(MoTAttention);

class BlockImpl : public DecoderLayer {
 public:
  BlockImpl(const ModelConfig& m, const std::vector<std::string>& order, int64_t n_image) : n_image_(n_image) {
    std::vector<nn::Norm> an, mn;
    std::vector<nn::Mlp> mlps;
    std::function<nn::Norm()> norm = [&] { return nn::Norm(m.dim, m.norm_type, m.norm_eps); };
    std::function<nn::Mlp()> mlp = [&] { return nn::Mlp(m.dim, m.ffn_hidden(), m.activation, m.mlp_bias); };
    register_module("attn_norm", dict_of(order, norm, an));
    attn = register_module("attn", MoTAttention(m, order));
    register_module("mlp_norm", dict_of(order, norm, mn));
    register_module("mlp", dict_of(order, mlp, mlps));
    for (const char* name : {kImage, kText}) {
      size_t i = std::find(order.begin(), order.end(), name) - order.begin();
      attn_norm_.push_back(an[i]);
      mlp_norm_.push_back(mn[i]);
      mlp_.push_back(mlps[i]);
    }
  }

  at::Tensor forward(const at::Tensor& h, const DecoderStep& step, nn::LayerKV* kv) override {
    const int64_t S = h.size(1);
    const int64_t ni = std::clamp<int64_t>(n_image_ - step.start_pos, 0, S);
    const std::vector<at::Tensor> parts = split_modalities(h, ni);
    std::vector<at::Tensor> normed;
    for (size_t m = 0; m < 2; ++m) normed.push_back(parts[m].size(1) ? attn_norm_[m](parts[m]) : parts[m]);
    std::vector<at::Tensor> a = attn->forward(normed, step, kv);
    std::vector<at::Tensor> out;
    for (size_t m = 0; m < 2; ++m) {
      if (parts[m].size(1) == 0) continue;
      const at::Tensor x = nn::residual_add(parts[m], a[m]);
      out.push_back(nn::residual_add(x, mlp_[m](mlp_norm_[m](x))));
    }
    return out.size() == 1 ? out[0] : at::cat(out, 1);
  }

  MoTAttention attn{nullptr};
  std::vector<nn::Norm> attn_norm_, mlp_norm_;
  std::vector<nn::Mlp> mlp_;

 private:
  int64_t n_image_;
};

class Hooks final : public DecoderHooks {
 public:
  Hooks(const ModelConfig& m, const Config& c, int64_t n_image) : model_(m), cfg_(c), n_image_(n_image) {}

  std::shared_ptr<DecoderLayer> make_layer(int64_t, const ModelConfig& m) override {
    auto b = std::make_shared<BlockImpl>(m, cfg_.modalities, n_image_);
    blocks_.push_back(b);
    return b;
  }

  void add_modules(DecoderImpl& decoder) override {
    std::vector<nn::Norm> norms;
    std::function<nn::Norm()> mk = [&] { return nn::Norm(model_.dim, model_.norm_type, model_.norm_eps); };
    decoder.register_module("mot_norms", dict_of(cfg_.modalities, mk, norms));
    for (const char* name : {kImage, kText}) {
      size_t i = std::find(cfg_.modalities.begin(), cfg_.modalities.end(), name) - cfg_.modalities.begin();
      final_norms_.push_back(norms[i]);
    }
  }

  at::Tensor rope_positions(int64_t start, int64_t length, const at::Device& device) const override {
    at::Tensor p = at::arange(start, start + length, at::TensorOptions().dtype(at::kLong).device(device));
    return at::where(p < n_image_, p, p - n_image_);  // RoPE restarts at 0 for the text
  }

  at::Tensor final_norm(const at::Tensor& h, const DecoderStep& step, DecoderImpl&) override {
    const int64_t S = h.size(1);
    const int64_t ni = std::clamp<int64_t>(n_image_ - step.start_pos, 0, S);
    if (ni == 0) return final_norms_[1](h);
    if (ni == S) return final_norms_[0](h);
    const std::vector<at::Tensor> parts = split_modalities(h, ni);
    return at::cat({final_norms_[0](parts[0]), final_norms_[1](parts[1])}, 1);
  }

  void init_weights(DecoderImpl& decoder) override {
    torch::NoGradGuard guard;
    for (auto& b : blocks_) {  // a fresh MoT block is an exact identity
      for (auto& o : b->attn->o_) o->weight.zero_();
      for (auto& m : b->mlp_) m->down_proj->weight.zero_();
    }
    decoder.norm->weight.requires_grad_(false);  // kept for key compatibility only
  }

  void prepare_fresh_run(DecoderImpl& decoder, const BuildContext& ctx) override {
    if (!cfg_.warm_start_from_text) return;
    std::string path = cfg_.warm_start_path;
    if (std::filesystem::is_directory(path)) path = (std::filesystem::path(path) / "model.safetensors").string();
    const int64_t copied = copy_dense(decoder, WarmStartFile(path), /*required=*/false);
    if (copied == 0) throw UserError(fmt::format("MoT warm start: no dense decoder weights found in {}", path));
    ctx.logger->info("MoT warm start: copied {} tensors from {}", copied, path);
  }

  // The text copies form the text model (the inverse of D4's warm start).
  std::vector<std::pair<std::string, at::Tensor>> dense_text_weights(DecoderImpl& decoder) override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    const size_t m = 1;  // text
    auto add = [&](const std::string& prefix, torch::nn::Module& mod) {
      for (auto& [name, p] : nn::unique_named_parameters(mod)) out.emplace_back(prefix + name, p);
    };
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const std::string L = fmt::format("layers.{}.", i);
      auto& b = *blocks_[i];
      add(L + "attention_norm.", *b.attn_norm_[m]);
      add(L + "attention.q_proj.", *b.attn->q_[m]);
      add(L + "attention.k_proj.", *b.attn->k_[m]);
      add(L + "attention.v_proj.", *b.attn->v_[m]);
      add(L + "attention.o_proj.", *b.attn->o_[m]);
      if (!b.attn->qn_.empty()) {
        add(L + "attention.q_norm.", *b.attn->qn_[m]);
        add(L + "attention.k_norm.", *b.attn->kn_[m]);
      }
      add(L + "mlp_norm.", *b.mlp_norm_[m]);
      add(L + "mlp.", *b.mlp_[m]);
    }
    out.emplace_back("token_embedding.embedding.weight", decoder.token_embedding->embedding->weight);
    add("norm.", *final_norms_[m]);
    if (!decoder.config().tie_embeddings) out.emplace_back("output_head.proj.weight", decoder.output_head->proj->weight);
    return out;
  }

  // D4: a pretrained dense decoder (init_from_hf) seeds every modality's copy.
  int64_t load_dense(DecoderImpl& decoder, const DenseWeights& weights) override {
    return copy_dense(decoder, weights, /*required=*/true);
  }

 private:
  // A dense checkpoint file, keys with or without the "transformer." prefix.
  class WarmStartFile final : public DenseWeights {
   public:
    explicit WarmStartFile(const std::string& path) : path_(path), file_(path) {}
    bool contains(const std::string& name) const override { return !key(name).empty(); }
    at::Tensor load(const std::string& name) const override { return file_.load(key(name)); }
    std::string where(const std::string& name) const override {
      std::string k = key(name);
      return fmt::format("MoT warm start: {}: '{}'", path_, k.empty() ? name : k);
    }

   private:
    std::string key(const std::string& name) const {
      for (const std::string& k : {"transformer." + name, name})
        if (file_.contains(k)) return k;
      return "";
    }
    std::string path_;
    safetensors::File file_;
  };

  // Each dense tensor into both modalities' copies; the embedding and the
  // head too, so the result is a usable text model.
  int64_t copy_dense(DecoderImpl& decoder, const DenseWeights& w, bool required) {
    int64_t copied = 0;
    auto copy = [&](const std::string& key, at::Tensor dst) { copied += w.copy_to(key, dst, required); };
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const std::string L = fmt::format("layers.{}.", i);
      auto& b = *blocks_[i];
      for (size_t m = 0; m < 2; ++m) {
        for (auto& [name, p] : nn::unique_named_parameters(*b.attn_norm_[m])) copy(L + "attention_norm." + name, p);
        const std::vector<std::pair<std::string, torch::nn::Linear>> projs{
            {"q_proj", b.attn->q_[m]}, {"k_proj", b.attn->k_[m]}, {"v_proj", b.attn->v_[m]}, {"o_proj", b.attn->o_[m]}};
        for (const auto& [proj, lin] : projs)
          for (auto& [name, p] : nn::unique_named_parameters(*lin)) copy(L + "attention." + proj + "." + name, p);
        if (!b.attn->qn_.empty()) {
          copy(L + "attention.q_norm.weight", b.attn->qn_[m]->weight);
          copy(L + "attention.k_norm.weight", b.attn->kn_[m]->weight);
        }
        for (auto& [name, p] : nn::unique_named_parameters(*b.mlp_norm_[m])) copy(L + "mlp_norm." + name, p);
        for (auto& [name, p] : nn::unique_named_parameters(*b.mlp_[m])) copy(L + "mlp." + name, p);
      }
    }
    for (size_t m = 0; m < 2; ++m)
      for (auto& [name, p] : nn::unique_named_parameters(*final_norms_[m])) copy("norm." + name, p);
    if (required) copy("norm.weight", decoder.norm->weight);  // the unused, frozen dense norm keeps its key
    copy("token_embedding.embedding.weight", decoder.token_embedding->embedding->weight);
    if (!decoder.config().tie_embeddings) copy("output_head.proj.weight", decoder.output_head->proj->weight);
    return copied;
  }

  ModelConfig model_;
  Config cfg_;
  int64_t n_image_;
  std::vector<std::shared_ptr<BlockImpl>> blocks_;
  std::vector<nn::Norm> final_norms_;
};

class Plugin final : public ArchPlugin {
 public:
  std::unique_ptr<VLMConfig> make_config() const override { return std::make_unique<Config>(); }
  void check(const VLMConfig& base, const ModelConfig& m, ConfigVisitor& v) const override {
    const auto& c = static_cast<const Config&>(base);
    const int64_t h = c.image_n_heads > 0 ? c.image_n_heads : m.n_heads;
    const int64_t kv = c.image_n_kv_heads > 0 ? c.image_n_kv_heads : m.kv_heads();
    v.require(h == m.n_heads && kv == m.kv_heads(), "mot_image_n_heads",
              fmt::format("image heads {}/{} (heads/kv heads) must equal the text's {}/{}", h, kv, m.n_heads,
                          m.kv_heads()));
    v.require(m.num_experts == 0, "arch",
              fmt::format("arch = \"mot\" with model.num_experts = {}: forge's MoT builds dense per-modality MLPs "
                          "(mixture-of-experts layers are built for joint_decoder and cross_attention); set "
                          "num_experts = 0 or choose another arch",
                          m.num_experts));
  }
  std::shared_ptr<ModalityStrategy> make_strategy(const VLMConfig&) const override {
    return std::make_shared<PrefixStrategy>("mot", /*modality_ids=*/true);
  }
  std::shared_ptr<DecoderHooks> make_hooks(const ModelConfig& m, const VLMConfig& c, int64_t n_visual) const override {
    return std::make_shared<Hooks>(m, static_cast<const Config&>(c), n_visual);
  }
};

void register_plugin(Registrar& r) { r.add_arch(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::arch::mot

FORGE_PLUGIN(forge::plugins::arch::mot::register_plugin,
             "Mixture-of-Transformers: per-modality weights in every layer, one global causal attention")
