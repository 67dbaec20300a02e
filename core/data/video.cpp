#include "core/data/video.h"

#include <cmath>
#include <memory>
#include <mutex>

#include <fmt/format.h>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

#include "forge/error.h"

namespace forge {

std::vector<double> uniform_timestamps(double duration, const FrameSampling& s) {
  if (!(duration > 0)) return {0.0};
  // Python's round(): half to even.
  auto count = static_cast<int64_t>(std::nearbyint(duration * s.fps));
  count = std::clamp(count, s.min_frames, s.max_frames);
  if (count <= 1) return {0.0};
  std::vector<double> t(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) t[i] = duration * static_cast<double>(i) / static_cast<double>(count - 1);
  return t;
}

namespace {

std::string av_reason(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecFreer {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameFreer {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketFreer {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsFreer {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};

// A decoded frame as 8-bit RGB at its own size.
Image to_rgb(const AVFrame& f, std::unique_ptr<SwsContext, SwsFreer>& sws, const std::string& path) {
  if (f.width <= 0 || f.height <= 0 || static_cast<int64_t>(f.width) * f.height > kMaxImagePixels)
    throw FormatError(fmt::format("{}: frames of {}x{} pixels; forge decodes frames of 1 to {} million pixels", path,
                                  f.width, f.height, kMaxImagePixels / 1000000));
  sws.reset(sws_getCachedContext(sws.release(), f.width, f.height, static_cast<AVPixelFormat>(f.format), f.width,
                                 f.height, AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr));
  if (!sws) throw FormatError(fmt::format("{}: cannot convert frames of pixel format {} to RGB", path, f.format));
  Image img;
  img.width = f.width;
  img.height = f.height;
  img.rgb.resize(static_cast<size_t>(f.width) * f.height * 3);
  uint8_t* dst[4] = {img.rgb.data(), nullptr, nullptr, nullptr};
  int stride[4] = {3 * f.width, 0, 0, 0};
  sws_scale(sws.get(), f.data, f.linesize, 0, f.height, dst, stride);
  return img;
}

}  // namespace

Clip decode_clip(const std::string& path, const FrameSampling& sampling) {
  static std::once_flag quiet;
  std::call_once(quiet, [] { av_log_set_level(AV_LOG_QUIET); });  // forge reports FFmpeg's reasons itself
  auto fail = [&](const std::string& what) { return FormatError(fmt::format("{}: {}", path, what)); };

  AVFormatContext* raw = nullptr;
  if (int rc = avformat_open_input(&raw, path.c_str(), nullptr, nullptr); rc < 0)
    throw fail("cannot open the video: " + av_reason(rc));
  std::unique_ptr<AVFormatContext, FormatCloser> fmt_ctx(raw);
  if (int rc = avformat_find_stream_info(fmt_ctx.get(), nullptr); rc < 0)
    throw fail("cannot read the video's streams: " + av_reason(rc));
  const AVCodec* codec = nullptr;
  const int si = av_find_best_stream(fmt_ctx.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (si < 0 || !codec) throw fail("no decodable video stream: " + av_reason(si < 0 ? si : AVERROR_DECODER_NOT_FOUND));
  AVStream* st = fmt_ctx->streams[si];
  const double tb = av_q2d(st->time_base);
  const double start = st->start_time != AV_NOPTS_VALUE ? static_cast<double>(st->start_time) * tb : 0.0;

  Clip clip;
  if (st->duration != AV_NOPTS_VALUE && st->duration > 0)
    clip.duration = static_cast<double>(st->duration) * tb;
  else if (fmt_ctx->duration != AV_NOPTS_VALUE && fmt_ctx->duration > 0)
    clip.duration = static_cast<double>(fmt_ctx->duration) / AV_TIME_BASE;
  const std::vector<double> targets = uniform_timestamps(clip.duration, sampling);

  std::unique_ptr<AVCodecContext, CodecFreer> dec(avcodec_alloc_context3(codec));
  if (!dec) throw fail("out of memory for the decoder");
  if (int rc = avcodec_parameters_to_context(dec.get(), st->codecpar); rc < 0)
    throw fail("bad codec parameters: " + av_reason(rc));
  dec->thread_count = 1;  // the data loader runs several clips at once
  if (int rc = avcodec_open2(dec.get(), codec, nullptr); rc < 0)
    throw fail(fmt::format("cannot open the {} decoder: {}", codec->name, av_reason(rc)));

  std::unique_ptr<AVPacket, PacketFreer> pkt(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameFreer> frame(av_frame_alloc()), last(av_frame_alloc());
  std::unique_ptr<SwsContext, SwsFreer> sws;
  size_t next = 0;        // the first target not yet served
  bool have_last = false;  // `last` holds the latest decoded frame
  double last_time = 0;
  int decode_error = 0;

  // Serves every target this frame reaches; keeps it as the latest frame.
  auto take = [&](AVFrame& f) {
    const int64_t ts = f.best_effort_timestamp != AV_NOPTS_VALUE ? f.best_effort_timestamp : f.pts;
    double t = ts != AV_NOPTS_VALUE ? static_cast<double>(ts) * tb - start : last_time;
    // A damaged stream's timestamps can go backwards or be meaningless (a zero
    // time base): times stay in order, a frame never earlier than the one before.
    if (!std::isfinite(t) || (have_last && t < last_time)) t = last_time;
    if (next < targets.size() && t + 1e-3 >= targets[next]) {
      Image img = to_rgb(f, sws, path);
      while (next < targets.size() && t + 1e-3 >= targets[next]) {
        clip.frames.push_back(img);
        clip.times.push_back(t);
        ++next;
      }
    }
    av_frame_unref(last.get());
    av_frame_ref(last.get(), &f);
    have_last = true;
    last_time = t;
  };
  auto drain = [&] {
    while (true) {
      int rc = avcodec_receive_frame(dec.get(), frame.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      if (rc < 0) {
        decode_error = rc;
        return;
      }
      take(*frame);
      av_frame_unref(frame.get());
    }
  };
  while (next < targets.size()) {
    int rc = av_read_frame(fmt_ctx.get(), pkt.get());
    if (rc == AVERROR_EOF) break;
    if (rc < 0) {
      decode_error = rc;
      break;
    }
    if (pkt->stream_index == si) {
      int sent = avcodec_send_packet(dec.get(), pkt.get());
      if (sent < 0 && sent != AVERROR(EAGAIN)) decode_error = sent;  // a damaged packet: keep going
      drain();
    }
    av_packet_unref(pkt.get());
  }
  if (next < targets.size()) {  // the decoder's buffered frames
    avcodec_send_packet(dec.get(), nullptr);
    drain();
  }
  if (!have_last)
    throw fail(decode_error ? "no frame could be decoded: " + av_reason(decode_error) : "the video has no frames");
  if (next < targets.size()) {  // targets past the last frame repeat it
    const Image img = to_rgb(*last, sws, path);
    for (; next < targets.size(); ++next) {
      clip.frames.push_back(img);
      clip.times.push_back(last_time);
    }
  }
  return clip;
}

}  // namespace forge
