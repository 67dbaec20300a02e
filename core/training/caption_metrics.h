// Caption metrics computed from generated text (D9): BLEU-4 (Papineni et
// al., 2002), CIDEr-D (Vedantam et al., 2015) and exact match, as the COCO
// caption evaluation code computes them (pycocoevalcap's Bleu and Cider
// scorers), so forge's numbers compare with published ones.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "forge/export.h"

namespace forge {

// The words a caption is scored on: lower-cased, with punctuation removed
// and split on white space. COCO's evaluation runs Stanford's PTB
// tokenizer (Java) for this step; this follows its rules for punctuation
// and clitics ("A dog's toy, don't!" gives "a dog 's toy do n't"), not for
// rarer cases (abbreviations, numbers with commas).
FORGE_API std::vector<std::string> caption_words(const std::string& text);

struct FORGE_API CaptionScores {
  std::array<double, 4> bleu{};  // corpus BLEU-1 .. BLEU-4
  double cider_d = 0;            // corpus mean of the per-caption CIDEr-D
  double exact_match = 0;        // share of captions equal (as words) to one of their references
  std::vector<double> cider_per_caption;
  int64_t captions = 0;
  double bleu4() const { return bleu[3]; }
};

// Scores `generated[i]` against `references[i]` (one or more each). Both are
// tokenized with caption_words. CIDEr-D's document frequencies come from the
// references of this set, as in COCO's evaluation. An empty set scores 0.
FORGE_API CaptionScores score_captions(const std::vector<std::string>& generated,
                                       const std::vector<std::vector<std::string>>& references);

}  // namespace forge
