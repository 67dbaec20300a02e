#include "core/data/loader.h"

#include <ATen/CPUGeneratorImpl.h>

#include <fmt/format.h>

#include "forge/error.h"
#include "forge/logging.h"

namespace forge {

DataLoader::DataLoader(std::shared_ptr<Dataset> dataset, std::shared_ptr<Collator> collator, Preprocess prep,
                       int64_t image_size, LoaderOptions options)
    : dataset_(std::move(dataset)), collator_(std::move(collator)), prep_(prep), image_size_(image_size), opt_(options) {
  const auto n = static_cast<int64_t>(dataset_->size());
  const int64_t per_rank = n / opt_.world;
  batches_per_epoch_ = per_rank / opt_.batch_size;
  if (batches_per_epoch_ == 0)
    throw UserError(fmt::format("{} has {} examples: fewer than one batch of {} per rank ({} ranks); lower "
                                "train.batch_size or add data",
                                dataset_->describe(), n, opt_.batch_size, opt_.world));
  for (int64_t i = 0; i < opt_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

DataLoader::~DataLoader() { stop_workers(); }

void DataLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

const std::vector<int64_t>& DataLoader::order(int64_t epoch) {
  // Called with mu_ held.
  auto it = orders_.find(epoch);
  if (it != orders_.end()) return it->second;
  const auto n = static_cast<int64_t>(dataset_->size());
  at::Tensor perm;
  if (opt_.shuffle) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opt_.seed + static_cast<uint64_t>(epoch));
    perm = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
  } else {
    perm = at::arange(n, at::TensorOptions().dtype(at::kLong));
  }
  const int64_t usable = n / opt_.world * opt_.world;  // drop the tail so every rank gets as many
  std::vector<int64_t> mine;
  auto p = perm.accessor<int64_t, 1>();
  for (int64_t i = opt_.rank; i < usable; i += opt_.world) mine.push_back(p[i]);
  // Keep at most the epochs in flight.
  while (orders_.size() > 2) orders_.erase(orders_.begin());
  return orders_.emplace(epoch, std::move(mine)).first->second;
}

std::pair<at::Tensor, at::Tensor> clip_pixels(const std::vector<Image>& frames_in, int64_t F, const Preprocess& prep,
                                               int64_t image_size, const std::string& source) {
  if (frames_in.empty()) throw FormatError(fmt::format("{}: a video example without frames", source));
  const auto real = std::min<int64_t>(F, static_cast<int64_t>(frames_in.size()));
  std::vector<at::Tensor> frames;
  for (int64_t f = 0; f < real; ++f) frames.push_back(preprocess_image(frames_in[f], prep, image_size));
  at::Tensor clip = at::zeros({F, 3, frames[0].size(1), frames[0].size(2)}, frames[0].options());
  clip.narrow(0, 0, real).copy_(at::stack(frames));
  at::Tensor mask = at::zeros({F}, at::kBool);
  mask.narrow(0, 0, real).fill_(true);
  return {clip, mask};
}

Batch DataLoader::build(int64_t epoch, int64_t k) {
  std::vector<int64_t> idx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto& o = order(epoch);
    idx.assign(o.begin() + k * opt_.batch_size, o.begin() + (k + 1) * opt_.batch_size);
  }
  std::vector<Example> examples;
  std::vector<at::Tensor> pixels, frame_masks;
  std::vector<std::string> skipped;
  for (int64_t i : idx) {
    try {
      Example ex = dataset_->get(static_cast<size_t>(i));
      if (opt_.frames > 0) {
        auto [clip, mask] = clip_pixels(ex.frames, opt_.frames, prep_, image_size_, ex.source);
        pixels.push_back(std::move(clip));
        frame_masks.push_back(std::move(mask));
      } else {
        pixels.push_back(preprocess_image(ex.image, prep_, image_size_));
      }
      ex.image = Image{};  // the pixels are in the tensor now
      ex.frames.clear();
      examples.push_back(std::move(ex));
    } catch (const FormatError& e) {
      if (!opt_.skip_bad)
        throw FormatError(fmt::format("{} (set data.bad_rows = \"skip\" to skip and count bad examples)", e.what()));
      skipped.push_back(e.what());  // counted and logged when the batch is used (next()), not when prefetched
    }
  }
  if (examples.empty())
    throw UserError(fmt::format("every example of a batch failed to load (epoch {}, batch {})", epoch, k));
  Batch b = collator_->collate(examples, pixels);
  if (!frame_masks.empty()) b.frame_mask = at::stack(frame_masks);
  b.skipped = std::move(skipped);
  if (opt_.pin_memory) {
    b.pixel_values = b.pixel_values.pin_memory();
    b.input_ids = b.input_ids.pin_memory();
    b.labels = b.labels.pin_memory();
    if (b.frame_mask.defined()) b.frame_mask = b.frame_mask.pin_memory();
  }
  return b;
}

void DataLoader::enqueue_until(int64_t global) {
  // Called with mu_ held.
  while (next_enqueue_ <= global) jobs_.push_back(next_enqueue_++);
}

void DataLoader::worker_loop() {
  while (true) {
    int64_t g;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      g = jobs_.front();
      jobs_.pop_front();
    }
    Batch b;
    std::exception_ptr err;
    try {
      b = build(g / batches_per_epoch_, g % batches_per_epoch_);
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (err) {
        failed_[g] = err;
      } else {
        ready_[g] = std::move(b);
      }
    }
    cv_.notify_all();
  }
}

Batch DataLoader::next() {
  const int64_t g = state_.epoch * batches_per_epoch_ + state_.batches_yielded;
  Batch out;
  if (threads_.empty()) {
    out = build(state_.epoch, state_.batches_yielded);
  } else {
    std::unique_lock<std::mutex> lock(mu_);
    enqueue_until(g + opt_.prefetch);
    cv_.notify_all();
    cv_.wait(lock, [&] { return ready_.count(g) || failed_.count(g); });
    if (failed_.count(g)) {
      auto err = failed_[g];
      failed_.erase(g);
      std::rethrow_exception(err);
    }
    out = std::move(ready_[g]);
    ready_.erase(g);
  }
  count_skipped(out);
  if (++state_.batches_yielded >= batches_per_epoch_) {
    std::lock_guard<std::mutex> lock(mu_);
    if (epoch_skipped_ > 0)
      log()->warn("epoch {} ended: {} of its {} examples were skipped as unreadable (they are met again every "
                  "epoch; fix or remove them)",
                  state_.epoch, epoch_skipped_, batches_per_epoch_ * opt_.batch_size);
    epoch_skipped_ = 0;
    ++state_.epoch;
    state_.batches_yielded = 0;
  }
  return out;
}

void DataLoader::count_skipped(const Batch& b) {
  if (b.skipped.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& msg : b.skipped) {
    ++skipped_;
    ++epoch_skipped_;
    ++skip_reasons_[msg.substr(msg.find(": ") == std::string::npos ? 0 : msg.find(": ") + 2)];
    log()->warn("skipped: {}", msg);
  }
}

LoaderState DataLoader::state() const {
  LoaderState s = state_;
  s.batch_size = opt_.batch_size;
  s.world = opt_.world;
  s.dataset_size = static_cast<int64_t>(dataset_->size());
  return s;
}

std::string DataLoader::restore(const LoaderState& saved) {
  LoaderState s = saved;
  std::string note;
  const auto n = static_cast<int64_t>(dataset_->size());
  const int64_t old_b = s.batch_size > 0 ? s.batch_size : opt_.batch_size;
  const int64_t old_w = s.world > 0 ? s.world : opt_.world;
  if (s.dataset_size > 0 && s.dataset_size != n) {
    note = fmt::format("the dataset has {} samples where the checkpoint's had {}, so epoch {} has another order; it "
                       "restarts from its first batch",
                       n, s.dataset_size, s.epoch);
    s.batches_yielded = 0;
  } else if (old_b != opt_.batch_size || old_w != opt_.world) {
    const int64_t consumed = s.batches_yielded * old_b * old_w;  // samples of the epoch, over all ranks
    s.batches_yielded = consumed / (opt_.batch_size * opt_.world);
    note = fmt::format("the checkpoint consumed {} samples of epoch {} in batches of {} x {} rank(s); with batches "
                       "of {} x {} rank(s) this continues at batch {} ({} samples seen again)",
                       consumed, s.epoch, old_b, old_w, opt_.batch_size, opt_.world, s.batches_yielded,
                       consumed - s.batches_yielded * opt_.batch_size * opt_.world);
  }
  if (s.batches_yielded >= batches_per_epoch_) {  // past this epoch's end: the next epoch
    ++s.epoch;
    s.batches_yielded = 0;
  }
  if (s.batches_yielded < 0 || s.epoch < 0) throw FormatError(fmt::format("invalid data position (epoch {}, batch {})",
                                                                          saved.epoch, saved.batches_yielded));
  stop_workers();
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.clear();
    ready_.clear();
    failed_.clear();
    state_ = LoaderState{s.epoch, s.batches_yielded};
    next_enqueue_ = s.epoch * batches_per_epoch_ + s.batches_yielded;
    stopping_ = false;
  }
  for (int64_t i = 0; i < opt_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
  return note;
}

int64_t DataLoader::skipped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return skipped_;
}

std::map<std::string, int64_t> DataLoader::skipped_by_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return skip_reasons_;
}

}  // namespace forge
