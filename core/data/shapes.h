// The embedded shapes dataset (no download): see shapes.cpp.
#pragma once

#include "core/data/data.h"

namespace forge {

class FORGE_API ShapesDataset final : public Dataset {
 public:
  enum class Split { Train, Heldout };
  // blank: every image is the empty background (a control that carries no information).
  ShapesDataset(size_t size, uint64_t seed, Split split, int image_size = 48, bool blank = false);
  size_t size() const override { return size_; }
  Example get(size_t index) const override;
  std::string describe() const override;
  // Expected accuracy on the image words of a model that does not see the image.
  static double chance_accuracy();

 private:
  size_t size_;
  uint64_t seed_;
  Split split_;
  int image_size_;
  bool blank_;
};

}  // namespace forge
