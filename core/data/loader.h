// The data loader: deterministic order, background threads, resumable.
//
// Epoch e visits a permutation of the dataset drawn from a CPU generator
// seeded with data_seed + e (unshuffled for evaluation), truncated to a
// multiple of the data-parallel world size and strided by rank. Batch k of an
// epoch is built from the same indices whatever thread builds it, so a run
// is reproducible and resumes exactly from (epoch, batches_yielded).
// `workers` threads build batches ahead, at most `prefetch` at a time.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "core/data/data.h"

namespace forge {

struct FORGE_API LoaderState {
  int64_t epoch = 0;
  int64_t batches_yielded = 0;  // in this epoch, by each rank
  // The geometry the position was recorded with (0: unknown, taken as today's).
  int64_t batch_size = 0;
  int64_t world = 0;
  int64_t dataset_size = 0;
};

struct FORGE_API LoaderOptions {
  int64_t batch_size = 8;
  uint64_t seed = 0;
  bool shuffle = true;
  int64_t rank = 0;
  int64_t world = 1;
  int64_t workers = 2;   // 0: build batches on the calling thread
  int64_t prefetch = 2;  // batches built ahead
  bool pin_memory = false;
  bool skip_bad = false;  // an example that fails to load is dropped and counted, else its error is raised
  int64_t frames = 0;     // video: frames per clip (pixel_values (B, F, 3, S, S) + frame_mask); 0: images
};

// A clip as a video model reads it: its first F frames preprocessed as
// (F, 3, S, S), zero after its last real frame, and the (F,) bool mask of the
// real ones. No frames is a FormatError naming `source`.
FORGE_API std::pair<at::Tensor, at::Tensor> clip_pixels(const std::vector<Image>& frames, int64_t F,
                                                        const Preprocess& prep, int64_t image_size,
                                                        const std::string& source);

class FORGE_API DataLoader {
 public:
  DataLoader(std::shared_ptr<Dataset> dataset, std::shared_ptr<Collator> collator, Preprocess prep,
             int64_t image_size, LoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch; after the last batch of an epoch the next epoch starts.
  Batch next();
  LoaderState state() const;
  // Continue from a saved position: next() yields the first unseen batch.
  // A position saved with another batch size or world size is converted
  // through the number of samples consumed (rounding down, so at most one
  // batch of samples is seen again); one saved on a dataset of another size
  // restarts its epoch (the epoch's order is not the same). Returns what was
  // done when it is not an exact continuation, "" otherwise.
  std::string restore(const LoaderState& s);
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  const Dataset& dataset() const { return *dataset_; }
  const Collator& collator() const { return *collator_; }
  const Preprocess& preprocess() const { return prep_; }
  int64_t image_size() const { return image_size_; }
  // Examples skipped as bad (skip_bad) in the batches next() has returned so
  // far (an example is counted each epoch it is met; prefetched batches are
  // not counted until used), and the reasons seen. Each epoch with skips ends
  // with a warning that sums them up.
  int64_t skipped() const;
  std::map<std::string, int64_t> skipped_by_reason() const;

 private:
  struct Job;
  Batch build(int64_t epoch, int64_t k);
  void count_skipped(const Batch& b);
  const std::vector<int64_t>& order(int64_t epoch);
  void enqueue_until(int64_t global);
  void worker_loop();
  void stop_workers();

  std::shared_ptr<Dataset> dataset_;
  std::shared_ptr<Collator> collator_;
  Preprocess prep_;
  int64_t image_size_;
  LoaderOptions opt_;
  int64_t batches_per_epoch_ = 0;
  LoaderState state_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, std::vector<int64_t>> orders_;    // epoch -> this rank's indices
  std::deque<int64_t> jobs_;                          // global batch numbers to build
  std::map<int64_t, Batch> ready_;
  std::map<int64_t, std::exception_ptr> failed_;
  int64_t next_enqueue_ = 0;                          // global batch number
  int64_t skipped_ = 0;
  int64_t epoch_skipped_ = 0;
  std::map<std::string, int64_t> skip_reasons_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace forge
