// Fuzz target: the JSONL caption manifest reader (image and video rows).
// Input: a flags byte, then the manifest. Flag bit 0: skip bad rows; bit 1:
// rows name video clips. The manifest's folder holds a.png, b.jpg and (when
// <data>/clip.mp4 exists) clip.mp4 for rows to name.
// Properties: JsonlDataset accepts the manifest or throws a forge error; with
// skip_bad, lines = rows + bad rows; every accepted row has a caption, only
// non-empty references, and decodes (or throws a forge error naming the
// manifest line).
#include <filesystem>

#include "core/data/jsonl.h"
#include "fuzz/support.h"

using namespace forge;

namespace {
void make_media() {
  Image img;
  img.width = 3;
  img.height = 2;
  img.rgb.assign(3 * 2 * 3, 128);
  write_png(fuzz::scratch_dir() + "/m/a.png", img);
  std::filesystem::copy_file(fuzz::scratch_dir() + "/m/a.png", fuzz::scratch_dir() + "/m/b.jpg",
                             std::filesystem::copy_options::overwrite_existing);
  std::string clip = fuzz::data_dir() + "/clip.mp4";
  if (std::filesystem::exists(clip))
    std::filesystem::copy_file(clip, fuzz::scratch_dir() + "/m/clip.mp4", std::filesystem::copy_options::overwrite_existing);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready = (std::filesystem::create_directories(fuzz::scratch_dir() + "/m"), make_media(), true);
  (void)ready;
  if (size == 0) return 0;
  uint8_t flags = data[0];
  std::string manifest = fuzz::write_file("m/manifest.jsonl", std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  JsonlOptions options;
  options.skip_bad = flags & 1;
  if (flags & 2) options.video = FrameSampling{2.0, 1, 3};
  fuzz::expect_forge_errors([&] {
    JsonlDataset ds(manifest, options);
    if (options.skip_bad && static_cast<int64_t>(ds.size()) + ds.bad_count() > ds.lines())
      fuzz::violated("more rows and bad rows than lines");
    for (size_t i = 0; i < ds.size() && i < 4; ++i) {
      if (ds.rows()[i].text.empty()) fuzz::violated("a row without a caption was accepted");
      for (const auto& r : ds.rows()[i].references)
        if (r.find_first_not_of(" \t\r\n") == std::string::npos) fuzz::violated("an empty reference was accepted");
      fuzz::expect_forge_errors([&] { (void)ds.get(i); });
    }
    (void)ds.describe();
  });
  return 0;
}
