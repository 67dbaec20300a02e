// forge's Hugging Face tokenizer.json reader (core/tokenizer/) against the Python `tokenizers`
// package: tokenizers trained and cases recorded by tests/fixtures/tokenizer_fixtures.py into
// FORGE_TEST_DATA_DIR/tok_*/ (tokenizer.json, cases.json).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <functional>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/data/job_tokenizer.h"
#include "core/data/tokenizer.h"
#include "tests/unit/test_helpers.h"
#include "forge/error.h"

using json = nlohmann::json;
using Offsets = std::vector<std::pair<size_t, size_t>>;

namespace Catch {
template <>
struct StringMaker<std::pair<size_t, size_t>> {
  static std::string convert(const std::pair<size_t, size_t>& p) {
    return "[" + std::to_string(p.first) + ", " + std::to_string(p.second) + ")";
  }
};
}  // namespace Catch

namespace {

// GPT-2 and Llama-3 styles, the GPT-2 model under other normalizers / pre-tokenizers, SentencePiece-style
// BPE with byte fallback (Llama-2, Mistral, Metaspace split), and Unigram without and with byte fallback.
const char* const kStyles[] = {"tok_gpt2",          "tok_llama3",          "tok_variant_nfkc", "tok_variant_nfd",
                               "tok_variant_split", "tok_variant_invert",  "tok_llama2",       "tok_mistral",
                               "tok_metaspace_split", "tok_unigram",       "tok_unigram_bf"};

std::string fixture(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return json::parse(in);
}

json cases_of(const std::string& style) { return read_json(fixture(style + "/cases.json")); }

std::shared_ptr<forge::Tokenizer> load(const std::string& style) {
  return forge::load_hf_tokenizer(fixture(style + "/tokenizer.json"));
}

Offsets offsets_of(const json& j) {
  Offsets out;
  for (const auto& o : j) out.emplace_back(o[0].get<size_t>(), o[1].get<size_t>());
  return out;
}

using forge::test::TempDir;

// The message of the forge::FormatError that f throws ("" and a failed check when it throws none).
std::string format_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const forge::FormatError& e) {
    return e.what();
  }
  FAIL_CHECK("no forge::FormatError was thrown");
  return "";
}

}  // namespace

TEST_CASE("HF tokenizer.json: ids, offsets and decoding match Python tokenizers on every case", "[tokenizer][parity]") {
  for (const char* style : kStyles) {
    DYNAMIC_SECTION(style) {
      auto tok = load(style);
      const json c = cases_of(style);
      REQUIRE(c["cases"].size() >= 30);
      int mismatched_ids = 0, mismatched_offsets = 0;
      for (const auto& cs : c["cases"]) {
        const std::string text = cs["text"];
        INFO(style << ": text " << json(text).dump());
        Offsets offsets;
        const auto ids = tok->encode(text, &offsets);
        const auto want = cs["ids"].get<std::vector<int64_t>>();
        CHECK(ids == want);
        mismatched_ids += ids != want;
        CHECK(ids == tok->encode(text));  // the same without offsets
        const Offsets want_offsets = offsets_of(cs["offsets"]);
        CHECK(offsets == want_offsets);
        mismatched_offsets += offsets != want_offsets;
        CHECK(tok->decode(ids) == cs["decoded"].get<std::string>());
        if (cs["roundtrip"].get<bool>()) CHECK(tok->decode(ids) == text);
      }
      CHECK(mismatched_ids == 0);
      CHECK(mismatched_offsets == 0);
      for (const auto& dc : c["decode_cases"]) {
        const auto ids = dc["ids"].get<std::vector<int64_t>>();
        INFO(style << ": decode " << dc["ids"].dump());
        CHECK(tok->decode(ids) == dc["decoded"].get<std::string>());
      }
    }
  }
}

TEST_CASE("HF tokenizer.json: vocab size, special ids and description", "[tokenizer]") {
  for (const char* style : kStyles) {
    INFO(style);
    auto tok = load(style);
    const json c = cases_of(style);
    CHECK(tok->vocab_size() == c["vocab_size"].get<int64_t>());
    CHECK(tok->bos_id() == c["bos_id"].get<int64_t>());
    CHECK(tok->eos_id() == c["eos_id"].get<int64_t>());
    CHECK(tok->pad_id() == c["pad_id"].get<int64_t>());
    CHECK_THAT(tok->describe(),
               Catch::Contains("tokenizer.json") && Catch::Contains("(" + std::to_string(tok->vocab_size()) + " ids)"));
  }
  // GPT-2 style, no tokenizer_config.json: <|endoftext|> is BOS, EOS and (no pad token) PAD.
  auto gpt2 = load("tok_gpt2");
  const json g = cases_of("tok_gpt2");
  const int64_t eot = g["added"]["<|endoftext|>"].get<int64_t>();
  CHECK(gpt2->bos_id() == eot);
  CHECK(gpt2->eos_id() == eot);
  CHECK(gpt2->pad_id() == eot);
  CHECK(gpt2->decode({eot}).empty());  // special tokens are skipped
  // Llama-3 style: tokenizer_config.json names BOS (a string) and EOS (an object); no pad: EOS pads.
  auto llama = load("tok_llama3");
  const json l = cases_of("tok_llama3");
  CHECK(llama->bos_id() == l["added"]["<|begin_of_text|>"].get<int64_t>());
  CHECK(llama->eos_id() == l["added"]["<|eot_id|>"].get<int64_t>());
  CHECK(llama->pad_id() == llama->eos_id());
  // A non-special added token stays in decoded text; added tokens are single ids.
  const int64_t tool = l["added"]["<|tool|>"].get<int64_t>();
  CHECK(llama->vocab_size() == tool + 1);  // added past the model's vocab
  CHECK(llama->encode("<|tool|>") == std::vector<int64_t>{tool});
  CHECK(llama->decode(llama->encode("a <|tool|> b")) == "a <|tool|> b");
  // A model folder works as well as the file in it.
  CHECK(forge::load_hf_tokenizer(fixture("tok_llama3"))->encode("Hello world") == llama->encode("Hello world"));
}

TEST_CASE("HF tokenizer.json: round trips, offsets cover the text, invalid UTF-8", "[tokenizer]") {
  auto gpt2 = load("tok_gpt2");
  auto llama = load("tok_llama3");
  const std::string texts[] = {
      "two red circles above a blue square",
      "Café 😀 日本語  tabs\t\nand 12345678",
      " leading and trailing ",
      "👩🏽‍🚀 e\u0301 \u00a0 \u3000 x",
      std::string(2000, ' ') + "after a long run of spaces",
  };
  for (const auto& tok : {gpt2, llama}) {
    for (const auto& text : texts) {
      INFO(tok->describe() << ": " << json(text).dump());
      Offsets offsets;
      const auto ids = tok->encode(text, &offsets);
      CHECK(tok->decode(ids) == text);
      REQUIRE(offsets.size() == ids.size());
      size_t prev_end = 0;
      for (const auto& [b, e] : offsets) {
        CHECK(b <= e);  // GPT-2 style trims spaces off offsets: a token of spaces can be empty
        CHECK(e <= text.size());
        CHECK(b >= (prev_end > 4 ? prev_end - 4 : 0));  // a split character repeats its span, nothing more
        prev_end = e;
      }
      CHECK(prev_end == text.size());
    }
    // Bytes that are not UTF-8 go through as bytes, and decode as U+FFFD (one per maximal ill-formed
    // subsequence, as Python's "replace").
    const std::string bad = "ok \xff\xfe \xe2\x82 end \xc3";
    Offsets offsets;
    const auto ids = tok->encode(bad, &offsets);
    CHECK(tok->decode(ids) == "ok \xEF\xBF\xBD\xEF\xBF\xBD \xEF\xBF\xBD end \xEF\xBF\xBD");
    REQUIRE(offsets.size() == ids.size());
    for (const auto& [b, e] : offsets) CHECK((b <= e && e <= bad.size()));
    CHECK(tok->encode("").empty());
    CHECK(tok->decode({}).empty());
    CHECK(tok->decode({-1, tok->vocab_size(), 1LL << 40}).empty());  // unknown ids are skipped
  }
}

TEST_CASE("HF tokenizer.json: the hand-written GPT-2 / Llama-3 matchers agree with ICU's regex engine", "[tokenizer]") {
  // forge matches the two common patterns by hand; the same pattern in a (?:...) group goes to ICU.
  TempDir d;
  json llama = read_json(fixture("tok_llama3/tokenizer.json"));
  json& split = llama["pre_tokenizer"]["pretokenizers"][0];
  REQUIRE(split["type"] == "Split");
  split["pattern"]["Regex"] = "(?:" + split["pattern"]["Regex"].get<std::string>() + ")";
  json gpt2 = read_json(fixture("tok_gpt2/tokenizer.json"));
  REQUIRE(gpt2["pre_tokenizer"]["type"] == "ByteLevel");
  REQUIRE(gpt2["pre_tokenizer"]["add_prefix_space"] == false);
  const std::string gpt2_regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  gpt2["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern", {{"Regex", "(?:" + gpt2_regex + ")"}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  const std::pair<std::string, json> pairs[] = {{"tok_llama3", llama}, {"tok_gpt2", gpt2}};
  // Text full of what the patterns decide on: contractions in both cases, whitespace runs before
  // letters / digits / punctuation / the end, CR and LF, digit runs, Unicode letters and marks.
  const char* const atoms[] = {" ",
                               " ",
                               "  ",
                               "\t",
                               "\r",
                               "\n",
                               "\r\n",
                               "'",
                               "'s",
                               "'S",
                               "'\u017f",
                               "'re",
                               "'RE",
                               "'Ve",
                               "'ll",
                               "'lL",
                               "'d",
                               "'M",
                               "'t",
                               "a",
                               "Z",
                               "word",
                               "\u00e9",
                               "\u65e5",
                               "\ud55c",
                               "1",
                               "42",
                               "12345",
                               "\u0663",
                               "\u00b2",
                               "!",
                               "?!",
                               ".",
                               "-",
                               "\u2014",
                               "\u00a0",
                               "\u3000",
                               "\u0085",
                               "\u000b",
                               "e\u0301",
                               "\xf0\x9f\x91\x8d",
                               "\xf0\x9f\x8f\xbd",
                               "\u200d",
                               "_"};
  std::mt19937 rng(5);
  std::vector<std::string> texts;
  for (int i = 0; i < 3000; ++i) {
    std::string t;
    const int n = static_cast<int>(rng() % 16);
    for (int k = 0; k < n; ++k) t += atoms[rng() % (sizeof(atoms) / sizeof(atoms[0]))];
    texts.push_back(t);
  }
  for (const auto& [style, j] : pairs) {
    INFO(style);
    auto fast = load(style);
    auto icu = forge::load_hf_tokenizer(d.write(style + "_icu/tokenizer.json", j.dump()));
    int differ = 0;
    for (const auto& t : texts) {
      Offsets a, b;
      const bool same = fast->encode(t, &a) == icu->encode(t, &b) && a == b;
      if (!same && differ++ < 5) FAIL_CHECK("fast and ICU differ on " << json(t).dump());
    }
    CHECK(differ == 0);
  }
}

TEST_CASE("HF tokenizer.json: byte fallback, Metaspace and Unigram, piece by piece", "[tokenizer]") {
  const std::string snow = "\u2603";  // never in the training corpus
  const std::pair<size_t, size_t> snow_span{1, 4};
  // Llama-2 style BPE: "a" -> "\u2581a"; the snowman -> its three UTF-8 bytes as <0xNN> tokens, each with the
  // span of the whole character. Alone, a byte token decodes to U+FFFD (ByteFallback); together, to the character.
  auto llama = load("tok_llama2");
  const json l = cases_of("tok_llama2");
  CHECK_THAT(llama->describe(), Catch::Contains("BPE tokenizer.json"));
  CHECK(llama->bos_id() == l["added"]["<s>"].get<int64_t>());
  CHECK(llama->eos_id() == l["added"]["</s>"].get<int64_t>());
  CHECK(llama->pad_id() == llama->eos_id());
  Offsets offsets;
  auto ids = llama->encode("a" + snow, &offsets);
  REQUIRE(ids.size() == 4);
  CHECK(offsets == Offsets{{0, 1}, snow_span, snow_span, snow_span});
  for (size_t i = 1; i < 4; ++i) CHECK(llama->decode({ids[i]}) == "\xEF\xBF\xBD");
  CHECK(llama->decode({ids[1], ids[2]}) == "\xEF\xBF\xBD\xEF\xBF\xBD");  // an incomplete character: one per byte
  CHECK(llama->decode(ids) == "a" + snow);
  CHECK(llama->decode({ids[0]}) == "a");  // "\u2581a" -> " a", then Strip takes the leading space
  // The same bytes under Mistral's Metaspace (prepend_scheme "first"): no "\u2581" after an added token.
  auto mistral = load("tok_mistral");
  const json m = cases_of("tok_mistral");
  const int64_t s = m["added"]["<s>"].get<int64_t>(), inst = m["added"]["[INST]"].get<int64_t>();
  CHECK(mistral->encode("a" + snow) == ids);
  const auto after_special = mistral->encode("<s>y");
  const auto at_start = mistral->encode("y");
  REQUIRE(after_special.size() == 2);
  CHECK(after_special[0] == s);
  CHECK(at_start.size() == 2);  // "\u2581", "y"
  CHECK(after_special[1] == at_start.back());
  CHECK(mistral->encode("[INST]") == std::vector<int64_t>{inst});
  CHECK(mistral->decode({s, inst}) == "[INST]");  // <s> is special, [INST] is not
  // Unigram without byte fallback: unknown characters fuse into one <unk> (special: decoded as nothing).
  auto unigram = load("tok_unigram");
  const json u = cases_of("tok_unigram");
  const int64_t unk = u["added"]["<unk>"].get<int64_t>();
  CHECK_THAT(unigram->describe(), Catch::Contains("Unigram tokenizer.json"));
  ids = unigram->encode(snow + snow, &offsets);
  REQUIRE(ids.size() == 2);
  CHECK(ids[1] == unk);
  CHECK(offsets[1] == std::make_pair(size_t{0}, size_t{6}));
  CHECK(unigram->decode(ids).empty());
  // With byte fallback, the fused unknown text becomes its bytes, each with the span of the whole of it.
  auto unigram_bf = load("tok_unigram_bf");
  ids = unigram_bf->encode(snow + snow, &offsets);
  REQUIRE(ids.size() == 7);
  for (size_t i = 1; i < 7; ++i) CHECK(offsets[i] == std::make_pair(size_t{0}, size_t{6}));
  CHECK(ids[1] == ids[4]);
  CHECK(std::count(ids.begin(), ids.end(), unk) == 0);
  CHECK(unigram_bf->decode(ids) == snow + snow);
}

TEST_CASE("HF tokenizer.json: bad SentencePiece-style and Unigram files name the file and the key", "[tokenizer][errors]") {
  TempDir d;
  auto bad = [&](const std::string& name, const json& j) {
    const std::string p = d.write(name + "/tokenizer.json", j.dump());
    return std::make_pair(p, format_error_of([&] { forge::load_hf_tokenizer(p); }));
  };
  auto edited = [](const std::string& style, const std::function<void(json&)>& edit) {
    json j = read_json(fixture(style + "/tokenizer.json"));
    edit(j);
    return j;
  };
  SECTION("decoders") {
    auto [p, m] = bad("ctc", edited("tok_llama2", [](json& j) { j["decoder"]["decoders"][1] = {{"type", "CTC"}}; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("decoder.decoders[1].type") &&
                      Catch::Contains("\"CTC\" is not supported") &&
                      Catch::Contains("ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence"));
    auto [p2, m2] = bad("strip", edited("tok_llama2", [](json& j) { j["decoder"]["decoders"][3]["start"] = -1; }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("decoder.decoders[3].start"));
    // A ByteLevel decoder needs the ByteLevel pre-tokenizer (byte-level BPE).
    auto [p3, m3] = bad("bl", edited("tok_llama2", [](json& j) { j["decoder"] = {{"type", "ByteLevel"}}; }));
    CHECK_THAT(m3, Catch::Contains(p3) && Catch::Contains("pre_tokenizer has no ByteLevel step"));
  }
  SECTION("normalizers") {
    auto [p, m] = bad("lower", edited("tok_llama2", [](json& j) {
                        j["normalizer"]["normalizers"][1] = {{"type", "Lowercase"}};
                      }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("normalizer.normalizers[1].type") &&
                      Catch::Contains("\"Lowercase\" is not supported") &&
                      Catch::Contains("NFC, NFD, NFKC, NFKD, Replace, Prepend, Strip and Sequence"));
    auto [p2, m2] = bad("replace", edited("tok_llama2", [](json& j) {
                          j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", "(unclosed"}};
                        }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("normalizer.normalizers[1].pattern.Regex"));
  }
  SECTION("Metaspace") {
    auto [p, m] = bad("scheme", edited("tok_mistral", [](json& j) { j["pre_tokenizer"]["prepend_scheme"] = "sometimes"; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("pre_tokenizer.prepend_scheme") &&
                      Catch::Contains("always, first, never"));
    auto [p2, m2] = bad("rep", edited("tok_mistral", [](json& j) { j["pre_tokenizer"]["replacement"] = "ab"; }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("pre_tokenizer.replacement"));
  }
  SECTION("Unigram") {
    auto [p, m] = bad("unk", edited("tok_unigram", [](json& j) { j["model"]["unk_id"] = 100000; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("model.unk_id") && Catch::Contains("100000"));
    auto [p2, m2] = bad("piece", edited("tok_unigram", [](json& j) { j["model"]["vocab"][3] = "x"; }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("model.vocab[3]") && Catch::Contains("[piece, score]"));
    auto [p3, m3] = bad("ublevel", edited("tok_unigram", [](json& j) {
                          j["pre_tokenizer"] = {{"type", "ByteLevel"}};
                          j["decoder"] = {{"type", "ByteLevel"}};
                        }));
    CHECK_THAT(m3, Catch::Contains(p3) && Catch::Contains("model.type") && Catch::Contains("Unigram") &&
                       Catch::Contains("ByteLevel"));
  }
}

TEST_CASE("HF tokenizer.json: encode is thread-safe", "[tokenizer]") {
  for (const char* style : {"tok_gpt2", "tok_llama3", "tok_llama2", "tok_unigram_bf"}) {
    INFO(style);
    auto tok = load(style);
    const json c = cases_of(style);
    std::atomic<int> wrong{0};
    auto work = [&] {
      for (int round = 0; round < 20; ++round) {
        for (const auto& cs : c["cases"]) {
          Offsets offsets;
          if (tok->encode(cs["text"].get<std::string>(), &offsets) != cs["ids"].get<std::vector<int64_t>>()) ++wrong;
        }
      }
    };
    std::thread a(work), b(work);
    a.join();
    b.join();
    CHECK(wrong == 0);
  }
}

TEST_CASE("HF tokenizer.json: bad files name the file and the key", "[tokenizer][errors]") {
  TempDir d;
  const json good = read_json(fixture("tok_gpt2/tokenizer.json"));
  // Writes `j` as <name>/tokenizer.json and returns (path, message of the error loading it).
  auto bad = [&](const std::string& name, const json& j) {
    const std::string p = d.write(name + "/tokenizer.json", j.dump());
    return std::make_pair(p, format_error_of([&] { forge::load_hf_tokenizer(p); }));
  };
  auto edited = [&](const std::function<void(json&)>& edit) {
    json j = good;
    edit(j);
    return j;
  };

  SECTION("missing file") {
    const std::string p = d.str() + "/none.json";
    CHECK_THAT(format_error_of([&] { forge::load_hf_tokenizer(p); }),
               Catch::Contains(p) && Catch::Contains("cannot open"));
  }
  SECTION("not JSON") {
    const std::string p = d.write("a.json", "{ \"model\": not json");
    CHECK_THAT(format_error_of([&] { forge::load_hf_tokenizer(p); }),
               Catch::Contains(p) && Catch::Contains("not valid JSON"));
  }
  SECTION("unsupported model type") {
    auto [p, m] = bad("wp", edited([](json& j) { j["model"]["type"] = "WordPiece"; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("model.type") && Catch::Contains("WordPiece") &&
                      Catch::Contains("BPE") && Catch::Contains("Unigram"));
    auto [p2, m2] = bad("wl", edited([](json& j) { j["model"]["type"] = "WordLevel"; }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("model.type \"WordLevel\" is not supported") &&
                       Catch::Contains("\"BPE\"") && Catch::Contains("\"Unigram\""));
  }
  SECTION("no model") {
    auto [p, m] = bad("nomodel", edited([](json& j) { j.erase("model"); }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("model is missing"));
  }
  SECTION("unsupported pre-tokenizer") {
    auto [p, m] = bad(
        "bert", edited([](json& j) {
          j["pre_tokenizer"] = {{"type", "Sequence"},
                                {"pretokenizers", {{{"type", "BertPreTokenizer"}}, j["pre_tokenizer"]}}};
        }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("pre_tokenizer.pretokenizers[0].type") &&
                      Catch::Contains("\"BertPreTokenizer\" is not supported") &&
                      Catch::Contains("ByteLevel, Split, Digits, Metaspace, WhitespaceSplit"));
    // Metaspace and ByteLevel are two ways of handling spaces: forge reads one or the other.
    auto [p2, m2] = bad("meta", edited([](json& j) {
                          j["pre_tokenizer"] = {{"type", "Sequence"},
                                                {"pretokenizers",
                                                 {{{"type", "Metaspace"}, {"replacement", "\u2581"}},
                                                  j["pre_tokenizer"]}}};
                        }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("pre_tokenizer.pretokenizers[1]") &&
                       Catch::Contains("Metaspace"));
  }
  SECTION("no ByteLevel pre-tokenizer") {
    auto [p, m] = bad("nobl", edited([](json& j) {
                        j["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
                      }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("pre_tokenizer") && Catch::Contains("ByteLevel"));
  }
  SECTION("malformed merges") {
    auto [p, m] = bad("merges", edited([](json& j) { j["model"]["merges"][2] = "a b c"; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("model.merges[2]") && Catch::Contains("\"a b c\""));
    auto [p2, m2] = bad("merges2", edited([](json& j) { j["model"]["merges"][1] = json::array({"a", 3}); }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("model.merges[1]"));
    auto [p3, m3] = bad("merges3", edited([](json& j) {
                          j["model"]["merges"][0] = json::array({"a", "\xe2\x82\xac\xe2\x82\xac"});
                        }));
    CHECK_THAT(m3,
               Catch::Contains(p3) && Catch::Contains("model.merges[0]") && Catch::Contains("is not in model.vocab"));
    auto [p4, m4] = bad("merges4", edited([](json& j) { j["model"]["merges"] = "nope"; }));
    CHECK_THAT(m4, Catch::Contains(p4) && Catch::Contains("model.merges"));
  }
  SECTION("other BPE flavours") {
    auto [p, m] = bad("fallback", edited([](json& j) { j["model"]["byte_fallback"] = true; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("model.byte_fallback"));
    auto [p2, m2] = bad("dropout", edited([](json& j) { j["model"]["dropout"] = 0.1; }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("model.dropout"));
    auto [p3, m3] = bad("prefix", edited([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }));
    CHECK_THAT(m3, Catch::Contains(p3) && Catch::Contains("model.continuing_subword_prefix"));
    auto [p4, m4] = bad("vocab", edited([](json& j) { j["model"]["vocab"]["x"] = "seven"; }));
    CHECK_THAT(m4, Catch::Contains(p4) && Catch::Contains("model.vocab[\"x\"]"));
  }
  SECTION("unsupported normalizer, decoder, split") {
    auto [p, m] = bad("lower", edited([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("normalizer.type") && Catch::Contains("Lowercase"));
    auto [p2, m2] = bad("dec", edited([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }));
    CHECK_THAT(m2, Catch::Contains(p2) && Catch::Contains("decoder.type") && Catch::Contains("WordPiece"));
    auto [p3, m3] = bad(
        "regex", edited([](json& j) {
          j["pre_tokenizer"] = {
              {"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}},
                j["pre_tokenizer"]}}};
        }));
    CHECK_THAT(m3, Catch::Contains(p3) && Catch::Contains("pre_tokenizer.pretokenizers[0].pattern.Regex") &&
                       Catch::Contains("(unclosed"));
    auto [p4, m4] =
        bad("behavior", edited([](json& j) {
              j["pre_tokenizer"] = {
                  {"type", "Sequence"},
                  {"pretokenizers",
                   {{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", "Sideways"}, {"invert", false}},
                    j["pre_tokenizer"]}}};
            }));
    CHECK_THAT(m4, Catch::Contains(p4) && Catch::Contains("pre_tokenizer.pretokenizers[0].behavior") &&
                       Catch::Contains("Sideways"));
  }
  SECTION("bad added tokens") {
    auto [p, m] = bad("added", edited([](json& j) { j["added_tokens"][0]["id"] = -3; }));
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("added_tokens[0].id"));
  }
  SECTION("tokenizer_config.json") {
    const std::string p = d.write("cfg/tokenizer.json", good.dump());
    const std::string cfg = d.write("cfg/tokenizer_config.json", R"({"bos_token": "<nope>"})");
    CHECK_THAT(format_error_of([&] { forge::load_hf_tokenizer(p); }),
               Catch::Contains(cfg) && Catch::Contains("bos_token") && Catch::Contains("<nope>"));
    d.write("cfg/tokenizer_config.json", "{ nope");
    CHECK_THAT(format_error_of([&] { forge::load_hf_tokenizer(p); }),
               Catch::Contains(cfg) && Catch::Contains("not valid JSON"));
    // Objects with "content", null entries falling back to the well-known tokens, and a pad.
    d.write("cfg/tokenizer_config.json",
            R"({"bos_token": null, "eos_token": {"content": "<mask>"}, "pad_token": "<|endoftext|>"})");
    auto tok = forge::load_hf_tokenizer(p);
    const json g = cases_of("tok_gpt2");
    CHECK(tok->bos_id() == g["added"]["<|endoftext|>"].get<int64_t>());
    CHECK(tok->eos_id() == g["added"]["<mask>"].get<int64_t>());
    CHECK(tok->pad_id() == g["added"]["<|endoftext|>"].get<int64_t>());
  }
}

TEST_CASE("ByteTokenizer: one id and one byte of offsets per byte, decode skips specials", "[tokenizer]") {
  forge::ByteTokenizer t;
  const std::string text = "añ 😀\n";
  Offsets offsets;
  const auto ids = t.encode(text, &offsets);
  REQUIRE(ids.size() == text.size());
  REQUIRE(offsets.size() == text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    CHECK(ids[i] == static_cast<unsigned char>(text[i]));
    CHECK(offsets[i] == std::make_pair(i, i + 1));
  }
  CHECK(t.decode(ids) == text);
  CHECK(t.decode({t.bos_id(), 'x', t.eos_id(), t.pad_id()}) == "x");
  CHECK(t.vocab_size() == 259);
}

TEST_CASE("training with a tokenizer.json, then forge generate prints decoded text", "[tokenizer][cli]") {
  forge::test::TempDir d;
  const std::string forge = FORGE_BIN;
  const std::string tok = fixture("tok_llama3/tokenizer.json");
  const int64_t ids = forge::make_tokenizer(tok)->vocab_size();
  const std::string common = " --data.tokenizer_path=" + tok +
                             " --model.vocab_size=448 --model.dim=32 --model.n_layers=1 --vision_encoder.feature_dim=32"
                             " --vision_encoder.image_size=16 --vision_encoder.patch_size=8 --train.batch_size=8"
                             " --data.shapes_heldout_samples=16 --eval.steps=2 --checkpoint.dir=" + d.str() + "/run";
  auto t = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=60" + common);
  INFO(t.output);
  REQUIRE(t.code == 0);
  CHECK_THAT(t.output, Catch::Contains(fmt::format("tokenizer.json ({} ids)", ids)));
  auto s = forge::test::run(forge + " data sample --split heldout --image-size 16 -n 1 --out " + d.str() + "/s");
  REQUIRE(s.code == 0);
  auto g = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --image " + d.str() +
                            "/s/heldout_000000.png --log-level=warn");
  INFO(g.output);
  CHECK(g.code == 0);
  // Decoded text, whatever the (barely trained) model says: only the captions' alphabet. Raw ids would
  // show digits; undecoded byte-level tokens would show "\u0120" (Ġ) for spaces; specials would show "<|".
  CHECK_THAT(g.output, !Catch::Contains("\xC4\xA0") && !Catch::Contains("<|"));
  std::string text = g.output;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  CHECK_FALSE(text.empty());
  for (char c : text) {
    INFO("character: '" << c << "' in \"" << text << "\"");
    CHECK(((c >= 'a' && c <= 'z') || c == ' '));
  }
  auto small = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=1" + common +
                                " --model.vocab_size=300");
  CHECK(small.code == 2);
  CHECK_THAT(small.output,
             Catch::Contains(fmt::format("model.vocab_size = 300 is smaller than the tokenizer's {} ids", ids)));
  // A tokenizer.json forge does not read: exit code 2, the file, the key and what forge reads.
  json wordlevel = read_json(fixture("tok_unigram/tokenizer.json"));
  wordlevel["model"] = {{"type", "WordLevel"}, {"vocab", {{"a", 0}}}, {"unk_token", "a"}};
  const std::string wl = d.write("wordlevel/tokenizer.json", wordlevel.dump());
  std::string with_wl = common;
  with_wl.replace(with_wl.find(tok), tok.size(), wl);
  auto refused =
      forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=1" + with_wl);
  INFO(refused.output);
  CHECK(refused.code == 2);
  CHECK_THAT(refused.output, Catch::Contains(wl) && Catch::Contains("model.type \"WordLevel\" is not supported") &&
                                 Catch::Contains("\"Unigram\""));
}

TEST_CASE("a tokenizer_path that is a hub id, not a file, says how to get the file", "[tokenizer][config]") {
  forge::DataConfig data;
  data.tokenizer_path = "gpt2";  // KempnerForge's configs name hub ids
  CHECK_THROWS_WITH(forge::make_tokenizer(data), Catch::Contains("data.tokenizer_path = \"gpt2\": no such file") &&
                                                     Catch::Contains("huggingface-cli download gpt2 tokenizer.json"));
  data.tokenizer_path = "";
  CHECK(forge::make_tokenizer(data)->vocab_size() == 259);
}
