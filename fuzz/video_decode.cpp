// Fuzz target: video decoding with FFmpeg's libraries and frame sampling.
// Input: a flags byte, then the clip file. Flags choose the sampling (fps
// 0.5-4, 1-4 frames). Properties: decode_clip returns one RGB frame per
// timestamp, each buffer matching its size, times in order; or it throws a
// forge error naming the file.
#include "core/data/video.h"
#include "fuzz/support.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  uint8_t flags = data[0];
  std::string path = fuzz::write_file("clip.bin", std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  FrameSampling sampling;
  sampling.fps = 0.5 * (1 + (flags & 7));
  sampling.min_frames = 1 + ((flags >> 3) & 1);
  sampling.max_frames = sampling.min_frames + ((flags >> 4) & 3);
  fuzz::expect_forge_errors([&] {
    Clip clip = decode_clip(path, sampling);
    if (clip.frames.empty() || clip.frames.size() != clip.times.size())
      fuzz::violated("decode_clip: frames and timestamps disagree");
    if (static_cast<int64_t>(clip.frames.size()) > sampling.max_frames) fuzz::violated("decode_clip: more frames than max_frames");
    for (size_t i = 0; i < clip.frames.size(); ++i) {
      const Image& f = clip.frames[i];
      if (f.width <= 0 || f.height <= 0 || f.rgb.size() != static_cast<size_t>(f.width) * f.height * 3)
        fuzz::violated("decode_clip: a frame whose buffer does not match its size");
      if (i && clip.times[i] < clip.times[i - 1]) fuzz::violated("decode_clip: times out of order");
    }
  });
  return 0;
}
