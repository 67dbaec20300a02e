// What a plugin registers, and the Registrar it registers it with.
//
// A plugin is one shared library of one kind (arch, adapter or encoder) and
// one name; `plugins/<kind>/<name>/` builds `libforge_<kind>_<name>.so`,
// which registers `<kind>/<name>`. Its entry callback (see plugin.h) receives
// a Registrar and adds exactly one factory object of its kind, plus optional
// aliases. Objects the factory creates are wrapped by the core so that they
// keep the plugin's library loaded for as long as they live.
#pragma once

#include <memory>
#include <string>

#include "forge/config.h"
#include "forge/decoder.h"
#include "forge/export.h"
#include "forge/modality.h"
#include "forge/vision.h"

namespace spdlog {
class logger;
}

namespace forge {

// Services the core hands to a plugin while it builds an object.
struct FORGE_API BuildContext {
  std::shared_ptr<spdlog::logger> logger;  // "plugin.<kind>.<name>"
  int64_t seed = 42;
};

// [vision_encoder] type = "<name>"
class FORGE_API EncoderPlugin {
 public:
  virtual ~EncoderPlugin();
  // The struct that parses [vision_encoder]. Default: EncoderConfig.
  virtual std::unique_ptr<EncoderConfig> make_config() const;
  // Feature dim, token count and preprocessing for `cfg`, without building
  // the encoder (reading a small config file at most). Throws UserError.
  virtual EncoderInfo describe(const EncoderConfig& cfg) const = 0;
  virtual std::shared_ptr<VisionEncoder> create(const EncoderConfig& cfg, const BuildContext& ctx) const = 0;
};

// [adapter] type = "<name>"
class FORGE_API AdapterPlugin {
 public:
  virtual ~AdapterPlugin();
  virtual std::unique_ptr<AdapterConfig> make_config() const;
  // Output tokens for n input tokens; throws UserError saying why n is not accepted.
  virtual int64_t output_num_tokens(const AdapterConfig& cfg, int64_t n) const = 0;
  // Cross-checks against the encoder, reported with v.require(ok, key, message)
  // on keys of [adapter]. Default: none.
  virtual void check(const AdapterConfig& cfg, const EncoderInfo& encoder, ConfigVisitor& v) const;
  virtual std::shared_ptr<VisionAdapter> create(const AdapterConfig& cfg, int64_t in_dim, int64_t out_dim,
                                                const BuildContext& ctx) const = 0;
};

// [vlm] arch = "<name>": the spec bundle of an architecture.
class FORGE_API ArchPlugin {
 public:
  virtual ~ArchPlugin();
  // The struct that parses [vlm] for this arch (a VLMConfig subclass).
  virtual std::unique_ptr<VLMConfig> make_config() const = 0;
  // Cross-checks against [model], reported with v.require on keys of [vlm]. Default: none.
  virtual void check(const VLMConfig& cfg, const ModelConfig& model, ConfigVisitor& v) const;
  virtual std::shared_ptr<ModalityStrategy> make_strategy(const VLMConfig& cfg) const = 0;
  // n_visual: image tokens per sample after the adapter.
  virtual std::shared_ptr<DecoderHooks> make_hooks(const ModelConfig& model, const VLMConfig& cfg,
                                                   int64_t n_visual) const = 0;
};

// Handed to a plugin's registration callback; valid only during the call.
class FORGE_API Registrar {
 public:
  class Impl;
  explicit Registrar(Impl* impl) : impl_(impl) {}

  const std::string& kind() const;
  const std::string& name() const;
  std::shared_ptr<spdlog::logger> logger() const;

  // Exactly one, matching the plugin's kind.
  void add_encoder(std::shared_ptr<EncoderPlugin> plugin);
  void add_adapter(std::shared_ptr<AdapterPlugin> plugin);
  void add_arch(std::shared_ptr<ArchPlugin> plugin);
  // Another name for the same plugin (e.g. the reference's "siglip2").
  void add_alias(const std::string& alias);

  // Used by FORGE_PLUGIN's wrapper: registration failed with `message`.
  void fail(const std::string& message) noexcept;

 private:
  Impl* impl_;
};

}  // namespace forge
