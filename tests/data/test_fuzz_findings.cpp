// What the fuzz targets (fuzz/) found, each fixed and pinned here in the
// ordinary suite: hostile configs, safetensors headers, tokenizer.json files,
// images and clips get one of forge's errors with a message, never a crash,
// an escaped library exception or a buffer overrun. The inputs that found
// them live in fuzz/regressions/ (base64) and are replayed here too.
#include <filesystem>
#include <fstream>

#include "core/data/data.h"
#include "core/data/tokenizer.h"
#include "core/data/video.h"
#include "forge/safetensors.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::error_of;
using forge::test::TempDir;

namespace {

std::string base64_decode(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  int bits = 0, acc = 0;
  for (char c : text) {
    int v = value(c);
    if (v < 0) continue;  // newlines, '=' padding
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// The inputs of fuzz/regressions/<target>/, decoded.
std::vector<std::pair<std::string, std::string>> regressions(const std::string& target) {
  std::vector<std::pair<std::string, std::string>> out;
  std::filesystem::path dir = std::filesystem::path(FORGE_SOURCE_DIR) / "fuzz" / "regressions" / target;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(e.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    out.emplace_back(e.path().filename().string(), base64_decode(text));
  }
  REQUIRE(!out.empty());
  return out;
}

std::string write_bytes(const TempDir& d, const std::string& name, const std::string& bytes) {
  std::string path = d.str() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

}  // namespace

TEST_CASE("fuzz finding: an override value that is not UTF-8 is a config error, not a crash", "[fuzz][config]") {
  LoadOptions options;
  options.overrides = {"--model.n_layers=\xba"};
  std::string msg = error_of([&] { load_config_text("", "x.toml", builtin_registry(), options); });
  CHECK_THAT(msg, Catch::Contains("override '--model.n_layers=\xba'"));
  CHECK_THAT(msg, Catch::Contains("write it as UTF-8"));
}

TEST_CASE("fuzz finding: JSON numbers beyond a double are format errors in safetensors headers and tokenizer.json",
          "[fuzz][safetensors][tokenizer]") {
  TempDir d;
  const std::string header = R"({"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  file += header + std::string(4, '\0');
  std::string st = write_bytes(d, "big.safetensors", file);
  CHECK_THAT(error_of([&] { safetensors::File f(st); }),
             Catch::Contains("big.safetensors") && Catch::Contains("header is not valid JSON"));
  std::string tj = write_bytes(d, "tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE", "dropout": 1e999}})");
  CHECK_THAT(error_of([&] { load_hf_tokenizer(tj); }), Catch::Contains("tokenizer.json: not valid JSON"));
}

TEST_CASE("fuzz finding: images must be PNG or JPEG with valid and defined tables and at most 178 million pixels",
          "[fuzz][data][image]") {
  TempDir d;
  // Another format, named by its first bytes (stb_image would take PNM, TGA, PSD, HDR, ...).
  CHECK_THAT(error_of([&] { read_image(write_bytes(d, "x.ppm", "P6\n0 0\n255\n")); }),
             Catch::Contains("x.ppm: not a PNG or JPEG file (it starts with bytes 50360a30)"));
  // A JPEG whose DHT segment declares 16 x 255 codes: stb_image 2.27 would write past its table.
  std::string jpeg = "\xFF\xD8\xFF\xC4";
  jpeg += std::string("\x01\x13", 2) + '\x00' + std::string(16, '\xFF') + std::string(256, '\x01');
  CHECK_THAT(error_of([&] { decode_image(reinterpret_cast<const uint8_t*>(jpeg.data()), jpeg.size(), "h.jpg"); }),
             Catch::Contains("h.jpg: not a valid JPEG at byte 6: a Huffman table declaring 4080 codes, more than 256"));
  // A baseline JPEG whose scan decodes with AC table 1, which no DHT segment defines: stb_image 2.27 would
  // read its uninitialised table and index out of bounds.
  std::string undefined = "\xFF\xD8";
  undefined += std::string("\xFF\xDB\x00\x43\x00", 5) + std::string(64, '\x01');                      // DQT 0
  undefined += std::string("\xFF\xC0\x00\x0B\x08\x00\x08\x00\x08\x01\x01\x11\x00", 13);        // SOF0 8x8
  undefined += std::string("\xFF\xC4\x00\x14\x00\x01", 6) + std::string(15, '\x00') + '\x00';      // DHT DC 0
  undefined += std::string("\xFF\xDA\x00\x08\x01\x01\x01\x00\x3F\x00", 10) + "\x12\x34\xFF\xD9";  // SOS
  CHECK_THAT(error_of([&] { decode_image(reinterpret_cast<const uint8_t*>(undefined.data()), undefined.size(), "u.jpg"); }),
             Catch::Contains("u.jpg: not a valid JPEG at byte 106: a scan uses AC Huffman table 1, which no DHT "
                             "segment before it defines"));
  // A 57-byte PNG that claims 15000 x 15000 pixels (675 MB decoded; stb_image itself stops at 1 GB).
  std::string png = "\x89PNG\r\n\x1a\n";
  png += std::string("\0\0\0\x0dIHDR", 8) + std::string("\0\0\x3a\x98\0\0\x3a\x98\x08\x02\0\0\0", 13) + "CRC!";
  png += std::string("\0\0\0\0IDAT", 8) + "CRC!" + std::string("\0\0\0\0IEND", 8) + "CRC!";
  CHECK_THAT(error_of([&] { decode_image(reinterpret_cast<const uint8_t*>(png.data()), png.size(), "bomb.png"); }),
             Catch::Contains("bomb.png: the image is 15000x15000 pixels, more than forge decodes (178 million"));
  // A folder (or a device) named as an image is not read.
  std::filesystem::create_directories(d.path() / "dir.png");
  CHECK_THAT(error_of([&] { read_image(d.str() + "/dir.png"); }), Catch::Contains("dir.png: not a regular file"));
  // Every image input that once found a bug: a forge error, or an image whose buffer matches its size.
  for (const auto& [name, bytes] : regressions("image_decode")) {
    INFO(name);
    try {
      Image img = decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
      CHECK(img.rgb.size() == static_cast<size_t>(img.width) * img.height * 3);
    } catch (const FormatError& e) {
      CHECK_THAT(e.what(), Catch::Contains(name));
    }
  }
}

TEST_CASE("fuzz finding: a clip whose timestamps go backwards still gives frames in time order", "[fuzz][data][video]") {
  TempDir d;
  for (const auto& [name, bytes] : regressions("video_decode")) {
    INFO(name);
    // Byte 0 chooses the sampling, as in fuzz/video_decode.cpp.
    const auto flags = static_cast<uint8_t>(bytes.at(0));
    FrameSampling sampling;
    sampling.fps = 0.5 * (1 + (flags & 7));
    sampling.min_frames = 1 + ((flags >> 3) & 1);
    sampling.max_frames = sampling.min_frames + ((flags >> 4) & 3);
    std::string path = write_bytes(d, name, bytes.substr(1));
    try {
      Clip clip = decode_clip(path, sampling);
      REQUIRE(clip.frames.size() == clip.times.size());
      for (size_t i = 1; i < clip.times.size(); ++i) CHECK(clip.times[i] >= clip.times[i - 1]);
    } catch (const FormatError& e) {
      CHECK_THAT(e.what(), Catch::Contains(name));
    }
  }
}
