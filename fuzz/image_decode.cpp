// Fuzz target: image decoding (PNG, JPEG and the rest stb_image reads) and
// the encoders' preprocessing.
// Input: the image file's bytes. Properties: decode_image returns an RGB
// image whose buffer matches its size, or throws a forge error; the
// preprocessed tensor is (3, 8, 8) and finite.
#include <ATen/ATen.h>

#include "core/data/data.h"
#include "fuzz/support.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_forge_errors([&] {
    Image img = decode_image(data, size, "fuzz.png");
    if (img.width <= 0 || img.height <= 0 ||
        img.rgb.size() != static_cast<size_t>(img.width) * static_cast<size_t>(img.height) * 3)
      fuzz::violated("a decoded image whose buffer does not match its size");
    if (static_cast<int64_t>(img.width) * img.height > (1 << 20)) return;  // preprocessing is torch's, not a parser
    Preprocess prep;
    prep.resize = (size & 1) ? "bicubic" : "bilinear";
    at::Tensor t = preprocess_image(img, prep, 8);
    if (t.sizes() != at::IntArrayRef({3, 8, 8}) || !t.isfinite().all().item<bool>())
      fuzz::violated("preprocessing gave another shape or a non-finite value");
  });
  return 0;
}
