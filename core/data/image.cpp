// Image decoding (stb_image), PNG writing (stb_image_write) and the
// encoder-specific preprocessing (D6).
#include <stb_image.h>
#include <stb_image_write.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>

#include "core/data/data.h"
#include "core/data/image_check.h"
#include "forge/error.h"

namespace forge {

Image decode_image(const uint8_t* bytes, size_t size, const std::string& name) {
  if (size > static_cast<size_t>(std::numeric_limits<int>::max()))
    throw FormatError(fmt::format("{}: {} bytes; forge reads images up to 2 GiB", name, size));
  check_image_container(bytes, size, name);
  int w = 0, h = 0, channels = 0;
  // The header's size first: a small file can claim gigapixels (a decompression bomb).
  if (stbi_info_from_memory(bytes, static_cast<int>(size), &w, &h, &channels) &&
      static_cast<int64_t>(w) * h > kMaxImagePixels)
    throw FormatError(fmt::format("{}: the image is {}x{} pixels, more than forge decodes ({} million pixels); "
                                  "resize it",
                                  name, w, h, kMaxImagePixels / 1000000));
  // req_comp = 3: grayscale is replicated, palettes expanded, alpha dropped.
  stbi_uc* px = stbi_load_from_memory(bytes, static_cast<int>(size), &w, &h, &channels, 3);
  if (!px) {
    const char* why = stbi_failure_reason();
    throw FormatError(fmt::format("{}: cannot decode image ({}); forge reads PNG and JPEG", name, why ? why : "unknown"));
  }
  if (w <= 0 || h <= 0) {  // stb accepted a 0 x 0 PNM header before forge took only PNG and JPEG
    stbi_image_free(px);
    throw FormatError(fmt::format("{}: the image has no pixels ({}x{})", name, w, h));
  }
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.assign(px, px + static_cast<size_t>(w) * h * 3);
  stbi_image_free(px);
  return img;
}

Image read_image(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw FormatError(fmt::format("{}: {}", path, std::filesystem::exists(path, ec) ? "not a regular file, not an image"
                                                                                    : "no such file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(fmt::format("{}: cannot open image", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw FormatError(fmt::format("{}: empty file, not an image", path));
  return decode_image(bytes.data(), bytes.size(), path);
}

void write_png(const std::string& path, const Image& img) {
  if (!stbi_write_png(path.c_str(), img.width, img.height, 3, img.rgb.data(), img.width * 3))
    throw RuntimeError(fmt::format("{}: cannot write PNG", path));
}

std::string encode_png(const Image& img) {
  std::string out;
  auto append = [](void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  if (img.width <= 0 || img.height <= 0 ||
      !stbi_write_png_to_func(append, &out, img.width, img.height, 3, img.rgb.data(), img.width * 3))
    throw RuntimeError(fmt::format("cannot encode a {}x{} image as PNG", img.width, img.height));
  return out;
}

namespace {

// (1, 3, H, W) float with values 0..255: what the resizers take.
at::Tensor image_tensor(const Image& img) {
  return at::from_blob(const_cast<uint8_t*>(img.rgb.data()), {img.height, img.width, 3}, at::kByte)
      .permute({2, 0, 1})
      .unsqueeze(0)
      .to(at::kFloat);
}

}  // namespace

Image thumbnail(const Image& img, int max_side) {
  if (img.width <= max_side && img.height <= max_side) return img;
  const double scale = static_cast<double>(max_side) / std::max(img.width, img.height);
  const int w = std::max(1, static_cast<int>(std::lround(img.width * scale)));
  const int h = std::max(1, static_cast<int>(std::lround(img.height * scale)));
  at::Tensor t = at::_upsample_bilinear2d_aa(image_tensor(img), {h, w}, false).round_().clamp_(0, 255).to(at::kByte);
  t = t.squeeze(0).permute({1, 2, 0}).contiguous();
  Image out;
  out.width = w;
  out.height = h;
  out.rgb.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  return out;
}

at::Tensor preprocess_image(const Image& img, const Preprocess& prep, int64_t size) {
  if (img.width <= 0 || img.height <= 0) throw InvalidArgument("preprocess: empty image");
  at::Tensor t = image_tensor(img).div_(255.0);
  if (img.width != size || img.height != size) {
    // Antialiased like PIL's resize; bicubic overshoot is clamped as PIL's uint8 output would be.
    t = prep.resize == "bicubic" ? at::_upsample_bicubic2d_aa(t, {size, size}, false)
                                 : at::_upsample_bilinear2d_aa(t, {size, size}, false);
    t = t.clamp_(0.0, 1.0);
  }
  t = t.squeeze(0);
  auto mean = at::tensor({prep.mean[0], prep.mean[1], prep.mean[2]}, at::kFloat).view({3, 1, 1});
  auto std = at::tensor({prep.std[0], prep.std[1], prep.std[2]}, at::kFloat).view({3, 1, 1});
  return (t - mean) / std;
}

}  // namespace forge
