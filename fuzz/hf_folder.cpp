// Fuzz target: importing a Hugging Face causal-LM folder, as `[model]
// init_from_hf` does: the job config is resolved from config.json, the
// decoder built, and model.safetensors loaded into it by name.
// Input: config.json, then (after a NUL byte) model.safetensors.
// Property: the import succeeds or throws a forge error (a missing or extra
// weight, a wrong shape or dtype, a config forge cannot build).
#include <algorithm>

#include "core/config/loader.h"
#include "core/io/hf_llm.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "fuzz/support.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Registry registry;
  auto parts = fuzz::split_parts(data, size, 2);
  if (parts.size() < 2) return 0;
  const std::string dir = fuzz::scratch_dir() + "/folder";
  fuzz::write_file("folder/config.json", parts[0]);
  fuzz::write_file("folder/model.safetensors", parts[1]);
  fuzz::expect_forge_errors([&] {
    std::string toml = "[model]\ninit_from_hf = \"" + dir + "\"\n[data]\ntokenizer_path = \"bytes\"\n";
    LoadedConfig loaded = load_config_text(toml, "fuzz.toml", registry, {});
    ModelConfig m = loaded.job.model;
    // A folder that asks for a large model is a choice, not a parsing bug: only small ones are built.
    const int64_t width = std::max(m.dim, m.n_heads * m.head_dim());
    const double params = 2.0 * m.vocab_size * m.dim + m.n_layers * (4.0 * m.dim * width + 3.0 * m.dim * m.ffn_hidden());
    if (params > 2e6 || m.max_seq_len > 4096) return;
    Decoder decoder = build_text_decoder(m);
    (void)hf::load_llm_weights(*decoder, dir);
  });
  return 0;
}
