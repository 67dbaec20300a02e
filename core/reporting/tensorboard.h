// TensorBoard event files: scalars, markdown text and PNG images, as
// TensorBoard's own readers expect them (Event/Summary protos in TFRecord
// framing), each event flushed to the file as it is written. Writing is
// best effort like metrics.jsonl: a failed write warns once and training
// goes on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "forge/export.h"

namespace spdlog {
class logger;
}

namespace forge {

// CRC-32C (Castagnoli) of `size` bytes, masked as TFRecord stores it:
// ((crc >> 15) | (crc << 17)) + 0xa282ead8.
FORGE_API uint32_t masked_crc32c(const void* data, size_t size);

// One record: length (uint64 LE), masked CRC of the length, the payload, masked CRC of the payload.
FORGE_API std::string tfrecord(const std::string& payload);

class FORGE_API TensorBoardWriter {
 public:
  // Starts a new events.out.tfevents.<unix time>.<host>.<pid>.forge file in
  // `dir` (created as needed); a folder that cannot be created or written is
  // a UserError naming it. `resumed_at` >= 0: the run resumes from the
  // checkpoint of that step, and a SessionLog START at the next step tells
  // TensorBoard to drop what an earlier attempt logged after the checkpoint.
  TensorBoardWriter(const std::string& dir, int64_t resumed_at, std::shared_ptr<spdlog::logger> logger);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Scalars of one step, in one event.
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  // Markdown, shown by TensorBoard's Text tab.
  void text(const std::string& tag, int64_t step, const std::string& markdown);
  // A PNG of width x height RGB pixels; `description` (markdown) is shown with it.
  void image(const std::string& tag, int64_t step, const std::string& png, int width, int height,
             const std::string& description);

  const std::string& path() const;
  int64_t failed_writes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace forge
