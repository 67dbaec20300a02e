// Caption metrics against COCO's evaluation code: tests/fixtures/make_fixtures.py
// scores fixed caption sets with pycocoevalcap (BLEU-1..4 and CIDEr-D) and
// forge must give the same numbers.
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/training/caption_metrics.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::error_of;

TEST_CASE("caption metrics equal pycocoevalcap's BLEU and CIDEr-D to 1e-6", "[eval][captions]") {
  std::ifstream in(std::string(FORGE_TEST_DATA_DIR) + "/captions/scores.json");
  REQUIRE(in);
  const auto sets = nlohmann::json::parse(in);
  REQUIRE(sets.size() >= 2);
  for (const auto& [name, set] : sets.items()) {
    INFO(name);
    const auto cands = set["candidates"].get<std::vector<std::string>>();
    const auto refs = set["references"].get<std::vector<std::vector<std::string>>>();
    CaptionScores s = score_captions(cands, refs);
    CHECK(s.captions == static_cast<int64_t>(cands.size()));
    for (int k = 0; k < 4; ++k) {
      INFO("BLEU-" << k + 1);
      CHECK(s.bleu[k] == Approx(set["bleu"][k].get<double>()).margin(1e-6).epsilon(0));
    }
    CHECK(s.cider_d == Approx(set["cider_d"].get<double>()).margin(1e-6).epsilon(0));
    const auto per = set["cider_per_caption"].get<std::vector<double>>();
    REQUIRE(s.cider_per_caption.size() == per.size());
    for (size_t i = 0; i < per.size(); ++i) {
      INFO("caption " << i);
      CHECK(s.cider_per_caption[i] == Approx(per[i]).margin(1e-6).epsilon(0));
    }
  }
}

TEST_CASE("exact match counts captions equal to one of their references as words", "[eval][captions]") {
  CaptionScores s = score_captions({"A red circle.", "a blue square", "a green star"},
                                   {{"a red circle", "a circle"}, {"a blue square!"}, {"a green triangle"}});
  CHECK(s.exact_match == Approx(2.0 / 3.0));
  CHECK(score_captions({}, {}).captions == 0);
  CHECK_THAT(error_of([] { score_captions({"a"}, {}); }), Catch::Contains("1 captions but 0 reference lists"));
  CHECK_THAT(error_of([] { score_captions({"a"}, {{}}); }), Catch::Contains("caption 0 has no reference"));
}

TEST_CASE("caption words: lower case, no punctuation, clitics split as the PTB tokenizer splits them",
          "[eval][captions]") {
  using W = std::vector<std::string>;
  CHECK(caption_words("A dog's toy, don't!") == W{"a", "dog", "'s", "toy", "do", "n't"});
  CHECK(caption_words("  Two (small) \"blue\" squares -- side-by-side.  ") ==
        W{"two", "small", "blue", "squares", "side-by-side"});
  CHECK(caption_words("the dogs' ball; ÉTÉ") == W{"the", "dogs", "ball", "été"});
  CHECK(caption_words("").empty());
}
