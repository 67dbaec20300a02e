// Hugging Face tokenizer.json (byte-level BPE) against the Python
// `tokenizers` package, on tokenizers and cases generated at test time.
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/data/tokenizer.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::error_of;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

json cases_of(const std::string& style) { return json::parse(std::ifstream(fixture(style + "/cases.json"))); }

void parity(const std::string& style) {
  auto tok = make_tokenizer(fixture(style + "/tokenizer.json"));
  json c = cases_of(style);
  CHECK(tok->vocab_size() == c["vocab_size"].get<int64_t>());
  int checked = 0;
  for (const auto& cs : c["cases"]) {
    const std::string text = cs["text"];
    INFO(style << " text: \"" << text << "\"");
    std::vector<std::pair<size_t, size_t>> offsets;
    auto ids = tok->encode(text, &offsets);
    CHECK(ids == cs["ids"].get<std::vector<int64_t>>());
    REQUIRE(offsets.size() == ids.size());
    if (cs["normalization_stable"].get<bool>()) {
      auto want = cs["offsets"].get<std::vector<std::pair<size_t, size_t>>>();
      CHECK(offsets == want);
    }
    CHECK(tok->decode(ids) == cs["decoded"].get<std::string>());
    ++checked;
  }
  CHECK(checked >= 30);
}

}  // namespace

TEST_CASE("GPT-2 style byte-level BPE matches HF tokenizers exactly", "[tokenizer][parity]") { parity("tok_gpt2"); }

TEST_CASE("Llama-3 style (split regex, ignore_merges, NFC, added tokens) matches HF tokenizers", "[tokenizer][parity]") {
  parity("tok_llama3");
}

TEST_CASE("decoding round-trips and special ids come from the files", "[tokenizer]") {
  auto gpt2 = make_tokenizer(fixture("tok_gpt2/tokenizer.json"));
  auto llama = make_tokenizer(fixture("tok_llama3/tokenizer.json"));
  for (const std::string text : {"two red circles above a blue square", "Café 😀 日本語  tabs\t\nand 12345",
                                 " leading and trailing "}) {
    CHECK(gpt2->decode(gpt2->encode(text)) == text);
    CHECK(llama->decode(llama->encode(text)) == text);
  }
  json added = cases_of("tok_llama3")["added"];
  CHECK(llama->bos_id() == added["<|begin_of_text|>"].get<int64_t>());  // from tokenizer_config.json
  CHECK(llama->eos_id() == added["<|end_of_text|>"].get<int64_t>());
  CHECK(llama->pad_id() == llama->eos_id());  // no pad token: EOS pads (padding is masked anyway)
  const int64_t eot = cases_of("tok_gpt2")["added"]["<|endoftext|>"].get<int64_t>();
  CHECK(gpt2->bos_id() == eot);  // GPT-2 style: one <|endoftext|> for both
  CHECK(gpt2->eos_id() == eot);
  CHECK(gpt2->decode({eot}) == "");  // special tokens are skipped
  CHECK(llama->decode(llama->encode("a <image> b")) == "a <image> b");  // a non-special added token is kept
}

TEST_CASE("encoding is thread-safe", "[tokenizer]") {
  auto tok = make_tokenizer(fixture("tok_llama3/tokenizer.json"));
  std::string text;
  for (int i = 0; i < 300; ++i) text += "Word" + std::to_string(i) + " naïve 😀 ";
  auto expected = tok->encode(text);
  std::vector<std::vector<int64_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[t] = tok->encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) CHECK(g == expected);
}

TEST_CASE("bad tokenizer files name the file and the key", "[tokenizer][errors]") {
  forge::test::TempDir d;
  CHECK_THAT(error_of([&] { make_tokenizer(d.str() + "/none.json"); }),
             Catch::Contains(d.str() + "/none.json") && Catch::Contains("cannot open"));
  auto bad = [&](const std::string& name, const std::string& body) {
    std::string p = d.write(name, body);
    return std::make_pair(p, error_of([&] { make_tokenizer(p); }));
  };
  auto [p1, m1] = bad("a.json", "{ not json");
  CHECK_THAT(m1, Catch::Contains(p1) && Catch::Contains("not valid JSON"));
  auto [p2, m2] = bad("b.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("model.type") && Catch::Contains("\"WordPiece\""));
  auto [p3, m3] = bad("c.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                   "pre_tokenizer": {"type": "Metaspace"}})");
  CHECK_THAT(m3, Catch::Contains(p3) && Catch::Contains("pre_tokenizer.type") && Catch::Contains("Metaspace"));
  auto [p4, m4] = bad("d.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})");
  CHECK_THAT(m4, Catch::Contains(p4) && Catch::Contains("model.merges") && Catch::Contains("entry 0"));
  auto [p5, m5] = bad("e.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [],
                                   "pre_tokenizer": null, "dropout": 0.1}})");
  CHECK_THAT(m5, Catch::Contains("model.dropout"));
}

TEST_CASE("the byte tokenizer", "[tokenizer]") {
  ByteTokenizer t;
  std::vector<std::pair<size_t, size_t>> off;
  auto ids = t.encode("añ", &off);
  CHECK(ids == std::vector<int64_t>{'a', 0xC3, 0xB1});
  CHECK(off.size() == 3);
  CHECK(off[2] == std::make_pair<size_t, size_t>(2, 3));
  CHECK(t.decode(ids) == "añ");
  CHECK(t.decode({257, 'x', 258, 256}) == "x");
}

TEST_CASE("training with a tokenizer.json, then forge generate prints decoded text", "[tokenizer][cli]") {
  forge::test::TempDir d;
  const std::string forge = FORGE_BIN;
  const std::string tok = fixture("tok_llama3/tokenizer.json");
  const std::string common = " --data.tokenizer_path=" + tok +
                             " --model.vocab_size=448 --model.dim=32 --model.n_layers=1 --vision_encoder.feature_dim=32"
                             " --vision_encoder.image_size=16 --vision_encoder.patch_size=8 --train.batch_size=8"
                             " --data.shapes_heldout_samples=16 --eval.steps=2 --checkpoint.dir=" + d.str() + "/run";
  auto t = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=60" + common);
  INFO(t.output);
  REQUIRE(t.code == 0);
  CHECK_THAT(t.output, Catch::Contains("Hugging Face BPE tokenizer.json (421 ids)"));
  auto s = forge::test::run(forge + " data sample --split heldout --image-size 16 -n 1 --out " + d.str() + "/s");
  REQUIRE(s.code == 0);
  auto g = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --image " + d.str() +
                            "/s/heldout_000000.png --log-level=warn");
  INFO(g.output);
  CHECK(g.code == 0);
  // Decoded text: every word is a word of the captions (a model this small may repeat itself, but
  // ids, byte-level artefacts such as "\u0120" or special tokens would show).
  CHECK_THAT(g.output, !Catch::Contains("\xC4\xA0") && !Catch::Contains("<|"));
  const std::set<std::string> vocab = {"a", "two", "three", "red", "green", "blue", "yellow", "circle", "circles",
                                       "square", "squares", "triangle", "triangles", "above", "below", "left",
                                       "right", "of"};
  std::istringstream words(g.output);
  std::string w;
  int n = 0;
  while (words >> w) {
    INFO("word: " << w);
    CHECK(vocab.count(w) == 1);
    ++n;
  }
  CHECK(n >= 3);
  auto small = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=1" + common +
                                " --model.vocab_size=300");
  CHECK(small.code == 2);
  CHECK_THAT(small.output, Catch::Contains("model.vocab_size = 300 is smaller than the tokenizer's 421 ids"));
}
