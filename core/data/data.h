// Data: images, examples, datasets, tokenizers, batches.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/data/tokenizer.h"
#include "forge/export.h"
#include "forge/vision.h"

namespace forge {

// ------------------------------------------------------------ images

// An 8-bit RGB image, row-major, 3 bytes per pixel.
struct FORGE_API Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
  uint8_t* at(int x, int y) { return &rgb[(static_cast<size_t>(y) * width + x) * 3]; }
};

// The most pixels forge decodes in one image or video frame: PIL's
// DecompressionBombError threshold (2 x 89.5 million), 537 MB as RGB. A small
// file can claim more; beyond it decoding is a FormatError asking to resize.
constexpr int64_t kMaxImagePixels = 178956970;

// Decodes PNG and JPEG (stb_image) to RGB: grayscale is replicated, palettes
// expanded, alpha dropped. FormatError naming the file and the reason when it
// is another format, cannot be decoded, has no pixels or more than
// kMaxImagePixels.
FORGE_API Image read_image(const std::string& path);
FORGE_API Image decode_image(const uint8_t* bytes, size_t size, const std::string& name);
FORGE_API void write_png(const std::string& path, const Image& image);
// The PNG file's bytes.
FORGE_API std::string encode_png(const Image& image);
// `image` shrunk (antialiased) so its longer side is at most `max_side`,
// keeping its aspect ratio; a smaller image is returned as it is.
FORGE_API Image thumbnail(const Image& image, int max_side);

// (3, size, size) float: resized with the encoder's filter (antialiased),
// scaled to [0, 1], normalised per channel with its mean and std (D6).
FORGE_API at::Tensor preprocess_image(const Image& image, const Preprocess& prep, int64_t size);

// ------------------------------------------------------------ examples and datasets

// A byte span [begin, end) of the text whose words depend on the image, with
// what they describe ("colour", "shape", "count", "relation"): what the
// caption accuracy metric scores.
struct FORGE_API ImageWord {
  size_t begin = 0;
  size_t end = 0;
  std::string kind;
};

struct FORGE_API Example {
  Image image;
  std::vector<Image> frames;  // a video clip's frames, in time order (then `image` is unused)
  std::string text;    // the caption: the part the loss trains on
  std::string prompt;  // optional; masked from the loss
  // More captions of the same image (COCO has five): generated captions are
  // scored against `text` and these; training uses `text` only.
  std::vector<std::string> references;
  std::vector<ImageWord> image_words;
  std::string source;  // where it came from, for messages ("manifest.jsonl:12")
};

// Random-access examples; get() is called from several loader threads at once.
class FORGE_API Dataset {
 public:
  virtual ~Dataset();
  virtual size_t size() const = 0;
  virtual Example get(size_t index) const = 0;
  virtual std::string describe() const = 0;
};

// ------------------------------------------------------------ batches

struct FORGE_API Batch {
  at::Tensor pixel_values;  // (B, 3, S, S) float; video: (B, F, 3, S, S), padding frames zero
  at::Tensor frame_mask;    // video: (B, F) bool, true = a real frame; undefined for images
  at::Tensor input_ids;     // (B, T) int64, padded with the tokenizer's PAD
  at::Tensor labels;        // (B, T) int64: -100 on padding, BOS and prompt positions
  // Per sample: input_ids positions [begin, end) of each image word, and its kind.
  std::vector<std::vector<std::tuple<int64_t, int64_t, std::string>>> image_words;
  std::vector<std::string> sources;
  int64_t label_tokens = 0;
  // Examples dropped from this batch (bad rows in skip mode): "file:line: reason" each.
  std::vector<std::string> skipped;
};

// Turns examples into a fixed-shape batch: [BOS] prompt text EOS, padded or
// truncated to exactly `text_len` tokens (D7: EOS appended so generation
// knows when to stop). BOS is prepended when the arch keeps no image
// position before the text (cross-attention), so the first caption token has
// a position to be predicted from. A chat template with {prompt} and {text}
// wraps each sample; what precedes {text} is masked like a prompt.
class FORGE_API Collator {
 public:
  Collator(std::shared_ptr<Tokenizer> tokenizer, int64_t text_len, bool prepend_bos, std::string chat_template = "");
  // Token ids and the number of leading positions masked from the loss.
  std::pair<std::vector<int64_t>, int64_t> tokens_of(const Example& ex,
                                                     std::vector<std::pair<size_t, size_t>>* text_offsets = nullptr,
                                                     int64_t* text_start = nullptr) const;
  Batch collate(const std::vector<Example>& examples, const std::vector<at::Tensor>& pixels) const;
  // What a generated caption follows: [BOS] prompt and the chat template's
  // text before {text}; ex.text is ignored.
  std::vector<int64_t> prompt_ids(const Example& ex) const;
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  int64_t text_len() const { return text_len_; }
  bool prepend_bos() const { return prepend_bos_; }

 private:
  std::shared_ptr<Tokenizer> tokenizer_;
  int64_t text_len_;
  bool prepend_bos_;
  std::string template_;
};

}  // namespace forge
