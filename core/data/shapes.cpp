// The embedded dataset: procedurally drawn shapes with captions that
// describe them, e.g. "two red circles above a blue square".
//
// Every sample is a pure function of (seed, split, index), so the dataset
// needs no files and any sample can be drawn on any thread. The caption has
// six image-dependent words (the count, colour and shape of group A, the
// relation, and the colour and shape of B), each uniformly distributed, so a
// model that ignores the image cannot beat chance on them: about 0.31 when
// averaged (count 1/3, colour 1/4, shape 1/3, relation 1/4, colour B 1/3
// since it differs from A's, shape B 1/3).
#include "core/data/shapes.h"

#include <array>
#include <cmath>
#include <random>

#include <fmt/format.h>

namespace forge {

namespace {

struct Colour {
  const char* name;
  uint8_t r, g, b;
};
constexpr std::array<Colour, 4> kColours{{{"red", 220, 45, 45}, {"green", 50, 185, 70}, {"blue", 60, 100, 235},
                                          {"yellow", 235, 215, 45}}};
constexpr std::array<const char*, 3> kShapes{"circle", "square", "triangle"};
constexpr std::array<const char*, 3> kCounts{"a", "two", "three"};
constexpr std::array<const char*, 4> kRelations{"above", "below", "left", "right"};

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Fills a shape of "radius" r centred at (cx, cy).
void draw(Image& img, const std::string& shape, double cx, double cy, double r, const Colour& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> jitter(-12, 12);
  auto clamp = [](int v) { return static_cast<uint8_t>(std::clamp(v, 0, 255)); };
  const uint8_t R = clamp(c.r + jitter(rng)), G = clamp(c.g + jitter(rng)), B = clamp(c.b + jitter(rng));
  for (int y = std::max(0, static_cast<int>(cy - r - 1)); y <= std::min(img.height - 1, static_cast<int>(cy + r + 1)); ++y) {
    for (int x = std::max(0, static_cast<int>(cx - r - 1)); x <= std::min(img.width - 1, static_cast<int>(cx + r + 1)); ++x) {
      const double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      bool inside = false;
      if (shape == "circle") {
        inside = dx * dx + dy * dy <= r * r;
      } else if (shape == "square") {
        inside = std::abs(dx) <= r * 0.85 && std::abs(dy) <= r * 0.85;
      } else {  // triangle, apex up
        const double top = -r, bottom = r * 0.8;
        if (dy >= top && dy <= bottom) {
          const double half = (dy - top) / (bottom - top) * r;
          inside = std::abs(dx) <= half;
        }
      }
      if (inside) {
        uint8_t* p = img.at(x, y);
        p[0] = R;
        p[1] = G;
        p[2] = B;
      }
    }
  }
}

}  // namespace

ShapesDataset::ShapesDataset(size_t size, uint64_t seed, Split split, int image_size, bool blank)
    : size_(size), seed_(seed), split_(split), image_size_(image_size), blank_(blank) {}

std::string ShapesDataset::describe() const {
  return fmt::format("embedded shapes, {} split: {} samples of {}x{} images (seed {}{})",
                     split_ == Split::Train ? "train" : "held-out", size_, image_size_, image_size_, seed_,
                     blank_ ? ", images blanked" : "");
}

Example ShapesDataset::get(size_t index) const {
  const uint64_t salt = split_ == Split::Train ? 0x7261696eull : 0x68656c64ull;
  std::mt19937_64 rng(splitmix(splitmix(seed_ ^ salt) + index));
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  const size_t count = pick(3) + 1, colour_a = pick(4), shape_a = pick(3), relation = pick(4);
  size_t colour_b = pick(3);
  if (colour_b >= colour_a) ++colour_b;  // B's colour differs from A's
  const size_t shape_b = pick(3);

  Example ex;
  const int S = image_size_;
  ex.image.width = ex.image.height = S;
  ex.image.rgb.resize(static_cast<size_t>(S) * S * 3);
  std::uniform_int_distribution<int> noise(0, 12);
  for (auto& v : ex.image.rgb) v = static_cast<uint8_t>(24 + noise(rng));

  // Regions: A's half and B's half of the image, split by the relation.
  const bool vertical = relation < 2;       // above / below
  const bool a_first = relation % 2 == 0;   // above, left: A in the first half
  const double half = S / 2.0;
  auto region = [&](bool first) {  // x0, y0, w, h
    if (vertical) return std::array<double, 4>{0, first ? 0 : half, static_cast<double>(S), half};
    return std::array<double, 4>{first ? 0 : half, 0, half, static_cast<double>(S)};
  };
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  if (!blank_) {
    // Group A: `count` shapes in slots along the half's long side.
    auto ra = region(a_first);
    const double slot = (vertical ? ra[2] : ra[3]) / static_cast<double>(count);
    const double r = std::min(slot, vertical ? ra[3] : ra[2]) * (0.26 + 0.08 * unit(rng));
    for (size_t k = 0; k < count; ++k) {
      const double along = slot * (k + 0.5) + (unit(rng) - 0.5) * (slot - 2 * r) * 0.8;
      const double across = (vertical ? ra[3] : ra[2]) * (0.5 + (unit(rng) - 0.5) * 0.35);
      const double cx = vertical ? ra[0] + along : ra[0] + across;
      const double cy = vertical ? ra[1] + across : ra[1] + along;
      draw(ex.image, kShapes[shape_a], cx, cy, r, kColours[colour_a], rng);
    }
    // B: one shape in the other half.
    auto rb = region(!a_first);
    const double r_b = std::min(rb[2], rb[3]) * (0.22 + 0.08 * unit(rng));
    const double cx = rb[0] + r_b + unit(rng) * (rb[2] - 2 * r_b);
    const double cy = rb[1] + r_b + unit(rng) * (rb[3] - 2 * r_b);
    draw(ex.image, kShapes[shape_b], cx, cy, r_b, kColours[colour_b], rng);
  }

  // "two red circles above a blue square" / "a green triangle left of a yellow circle"
  std::string& t = ex.text;
  auto word = [&](const std::string& w, const char* kind) {
    if (!t.empty()) t += ' ';
    if (kind) ex.image_words.push_back(ImageWord{t.size(), t.size() + w.size(), kind});
    t += w;
  };
  word(kCounts[count - 1], "count");
  word(kColours[colour_a].name, "colour");
  word(std::string(kShapes[shape_a]) + (count > 1 ? "s" : ""), "shape");
  word(kRelations[relation], "relation");
  if (relation >= 2) word("of", nullptr);
  word("a", nullptr);
  word(kColours[colour_b].name, "colour");
  word(kShapes[shape_b], "shape");
  ex.source = fmt::format("shapes:{}:{}", split_ == Split::Train ? "train" : "heldout", index);
  return ex;
}

double ShapesDataset::chance_accuracy() { return (1.0 / 3 + 1.0 / 4 + 1.0 / 3 + 1.0 / 4 + 1.0 / 3 + 1.0 / 3) / 6.0; }

}  // namespace forge
