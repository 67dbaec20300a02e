#include "core/training/caption_metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <string_view>

#include <unicode/locid.h>
#include <unicode/unistr.h>

#include "forge/error.h"

namespace forge {

namespace {

constexpr int kMaxN = 4;

using Ngram = std::vector<std::string>;
using Counts = std::map<Ngram, double>;

// n-gram counts for n = 1..4, keyed by the n-gram's words.
Counts ngram_counts(const std::vector<std::string>& words) {
  Counts c;
  for (size_t n = 1; n <= kMaxN; ++n)
    for (size_t i = 0; i + n <= words.size(); ++i) c[Ngram(words.begin() + i, words.begin() + i + n)] += 1;
  return c;
}

// Corpus BLEU as the COCO code computes it: clipped n-gram matches summed over
// the corpus, the reference length closest to each candidate's (the shorter on
// a tie), and the same small constants that keep empty counts finite.
std::array<double, 4> corpus_bleu(const std::vector<std::vector<std::string>>& cands,
                                  const std::vector<std::vector<std::vector<std::string>>>& refs) {
  constexpr double tiny = 1e-15, small = 1e-9;
  std::array<double, kMaxN> correct{}, guess{};
  double test_len = 0, ref_len = 0;
  for (size_t s = 0; s < cands.size(); ++s) {
    const auto& cand = cands[s];
    Counts max_ref;
    size_t closest = 0;
    long best = -1;
    for (const auto& ref : refs[s]) {
      for (const auto& [g, n] : ngram_counts(ref)) max_ref[g] = std::max(max_ref[g], n);
      const long diff = std::labs(static_cast<long>(ref.size()) - static_cast<long>(cand.size()));
      if (best < 0 || diff < best || (diff == best && ref.size() < closest)) {
        best = diff;
        closest = ref.size();
      }
    }
    test_len += static_cast<double>(cand.size());
    ref_len += static_cast<double>(closest);
    for (size_t k = 1; k <= kMaxN; ++k)
      guess[k - 1] += static_cast<double>(cand.size() >= k ? cand.size() - k + 1 : 0);
    for (const auto& [g, n] : ngram_counts(cand)) {
      auto it = max_ref.find(g);
      correct[g.size() - 1] += std::min(n, it == max_ref.end() ? 0.0 : it->second);
    }
  }
  std::array<double, kMaxN> bleu{};
  double product = 1;
  for (int k = 0; k < kMaxN; ++k) {
    product *= (correct[k] + tiny) / (guess[k] + small);
    bleu[k] = std::pow(product, 1.0 / (k + 1));
  }
  const double ratio = (test_len + tiny) / (ref_len + small);
  if (ratio < 1)
    for (auto& b : bleu) b *= std::exp(1 - 1 / ratio);
  return bleu;
}

// One caption's tf-idf vectors per n-gram order, their norms, and its length.
struct TfIdf {
  std::array<std::map<Ngram, double>, kMaxN> vec;
  std::array<double, kMaxN> norm{};
  double length = 0;
};

TfIdf tf_idf(const Counts& counts, const std::map<Ngram, double>& doc_freq, double log_docs) {
  TfIdf t;
  for (const auto& [g, tf] : counts) {
    auto it = doc_freq.find(g);
    const double df = std::log(std::max(1.0, it == doc_freq.end() ? 0.0 : it->second));
    const size_t n = g.size() - 1;
    const double v = tf * (log_docs - df);
    t.vec[n][g] = v;
    t.norm[n] += v * v;
    // COCO's code measures a caption's length by its bigrams (the n = 1 slot
    // of a 0-based loop), one less than its words; the Gaussian penalty on
    // the difference is the same either way unless a caption is empty.
    if (n == 1) t.length += tf;
  }
  for (auto& x : t.norm) x = std::sqrt(x);
  return t;
}

// CIDEr-D: per order, the cosine of tf-idf vectors with the candidate's
// weights clipped at the reference's, times a Gaussian penalty on the length
// difference (sigma 6); the mean over orders and references, times 10.
std::vector<double> cider_d(const std::vector<std::vector<std::string>>& cands,
                            const std::vector<std::vector<std::vector<std::string>>>& refs) {
  constexpr double sigma = 6.0;
  std::map<Ngram, double> doc_freq;
  std::vector<std::vector<Counts>> ref_counts(refs.size());
  for (size_t s = 0; s < refs.size(); ++s) {
    std::set<Ngram> seen;
    for (const auto& r : refs[s]) {
      ref_counts[s].push_back(ngram_counts(r));
      for (const auto& [g, n] : ref_counts[s].back()) seen.insert(g);
    }
    for (const auto& g : seen) doc_freq[g] += 1;
  }
  const double log_docs = std::log(static_cast<double>(refs.size()));
  std::vector<double> scores;
  for (size_t s = 0; s < cands.size(); ++s) {
    const TfIdf c = tf_idf(ngram_counts(cands[s]), doc_freq, log_docs);
    std::array<double, kMaxN> sum{};
    for (const auto& rc : ref_counts[s]) {
      const TfIdf r = tf_idf(rc, doc_freq, log_docs);
      const double delta = c.length - r.length;
      for (int n = 0; n < kMaxN; ++n) {
        double val = 0;
        for (const auto& [g, v] : c.vec[n]) {
          auto it = r.vec[n].find(g);
          const double rv = it == r.vec[n].end() ? 0.0 : it->second;
          val += std::min(v, rv) * rv;
        }
        if (c.norm[n] != 0 && r.norm[n] != 0) val /= c.norm[n] * r.norm[n];
        sum[n] += val * std::exp(-(delta * delta) / (2 * sigma * sigma));
      }
    }
    double mean = 0;
    for (double x : sum) mean += x;
    mean /= kMaxN;
    scores.push_back(mean / static_cast<double>(refs[s].size()) * 10.0);
  }
  return scores;
}

}  // namespace

std::vector<std::string> caption_words(const std::string& raw) {
  std::string text;  // lower-cased as Java's toLowerCase does it (Unicode, not only ASCII)
  icu::UnicodeString::fromUTF8(raw).toLower(icu::Locale::getRoot()).toUTF8String(text);
  std::vector<std::string> words;
  std::string cur;
  auto flush = [&] {
    // A word of dashes or quotes alone is punctuation in the PTB rules.
    if (!cur.empty() && cur.find_first_not_of("-'") != std::string::npos) words.push_back(cur);
    cur.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const auto ch = static_cast<unsigned char>(text[i]);
    if (std::isspace(ch) || std::string_view(".,!?;:\"()[]{}`").find(static_cast<char>(ch)) != std::string_view::npos) {
      flush();
    } else if (ch == '\'' && !cur.empty() && cur.find_first_not_of("-'") != std::string::npos) {
      // Clitics split as the PTB tokenizer splits them: "dog's" -> "dog" "'s", "don't" -> "do" "n't".
      const bool nt = cur.size() > 1 && cur.back() == 'n' && i + 1 < text.size() &&
                      text[i + 1] == 't';
      if (nt) cur.pop_back();
      flush();
      cur = nt ? "n'" : "'";
    } else {
      cur.push_back(static_cast<char>(ch));
    }
  }
  flush();
  return words;
}

CaptionScores score_captions(const std::vector<std::string>& generated,
                             const std::vector<std::vector<std::string>>& references) {
  if (generated.size() != references.size())
    throw InvalidArgument("score_captions: " + std::to_string(generated.size()) + " captions but " +
                          std::to_string(references.size()) + " reference lists");
  CaptionScores out;
  out.captions = static_cast<int64_t>(generated.size());
  if (generated.empty()) return out;
  std::vector<std::vector<std::string>> cands;
  std::vector<std::vector<std::vector<std::string>>> refs;
  int64_t exact = 0;
  for (size_t s = 0; s < generated.size(); ++s) {
    if (references[s].empty()) throw InvalidArgument("score_captions: caption " + std::to_string(s) + " has no reference");
    cands.push_back(caption_words(generated[s]));
    refs.emplace_back();
    for (const auto& r : references[s]) refs.back().push_back(caption_words(r));
    if (std::find(refs.back().begin(), refs.back().end(), cands.back()) != refs.back().end()) ++exact;
  }
  out.bleu = corpus_bleu(cands, refs);
  out.cider_per_caption = cider_d(cands, refs);
  for (double x : out.cider_per_caption) out.cider_d += x;
  out.cider_d /= static_cast<double>(out.cider_per_caption.size());
  out.exact_match = static_cast<double>(exact) / static_cast<double>(generated.size());
  return out;
}

}  // namespace forge
