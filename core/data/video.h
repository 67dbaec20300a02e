// Video clips: which frames to take (the reference's "uniform" policy, spec
// section 4.4) and decoding them with FFmpeg's libraries.
#pragma once

#include <string>
#include <vector>

#include "core/data/data.h"

namespace forge {

struct FORGE_API FrameSampling {
  double fps = 2.0;         // frames per second of clip time to take
  int64_t min_frames = 4;   // at least (a short clip repeats its last frame)
  int64_t max_frames = 16;  // at most (a long clip is sampled more sparsely)
};

// Timestamps (seconds) to take from a clip of `duration` seconds: none known
// (<= 0) gives [0]; else count = round(duration * fps) (half to even),
// clamped to [min_frames, max_frames]; a count of 1 gives [0], more are
// evenly spaced from 0 to the duration, both ends included.
FORGE_API std::vector<double> uniform_timestamps(double duration, const FrameSampling& sampling);

struct FORGE_API Clip {
  std::vector<Image> frames;  // RGB, the clip's own size, in time order
  std::vector<double> times;  // seconds, one per frame
  double duration = 0;        // seconds, as the container says (0: unknown)
};

// Decodes the clip's video stream and keeps, for each timestamp, the first
// frame whose time + 1e-3 s reaches it; timestamps past the last frame
// repeat the last frame. An unreadable file, a file without a video stream or
// one whose frames cannot be decoded is a FormatError naming the file and
// FFmpeg's reason.
FORGE_API Clip decode_clip(const std::string& path, const FrameSampling& sampling);

}  // namespace forge
