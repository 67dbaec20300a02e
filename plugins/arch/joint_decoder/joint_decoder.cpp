// arch/joint_decoder: [vlm] arch = "joint_decoder" (the default).
//
// The image tokens are placed in front of the text in one residual stream
// and the plain decoder runs over both: image positions 0..N-1, text N..N+T-1,
// causal attention throughout. The last image position predicts the first
// text token (D1). No keys of its own; no modules beyond the plain decoder.
#include "forge/forge.h"

namespace forge::plugins::arch::joint_decoder {

class Plugin final : public ArchPlugin {
 public:
  std::unique_ptr<VLMConfig> make_config() const override { return std::make_unique<VLMConfig>(); }
  std::shared_ptr<ModalityStrategy> make_strategy(const VLMConfig&) const override {
    return std::make_shared<PrefixStrategy>("joint_decoder", /*modality_ids=*/false);
  }
  std::shared_ptr<DecoderHooks> make_hooks(const ModelConfig&, const VLMConfig&, int64_t) const override {
    return std::make_shared<DecoderHooks>();
  }
};

void register_plugin(Registrar& r) { r.add_arch(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::arch::joint_decoder

FORGE_PLUGIN(forge::plugins::arch::joint_decoder::register_plugin,
             "Image tokens prefixed to the text in one causal residual stream")
