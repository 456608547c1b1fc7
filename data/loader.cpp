// data/loader.cpp — the batch loader: per-epoch order, per-sample seeds, in-order bounded prefetch.
#include "data/loader.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <stdexcept>

#include "data/image.h"
#include "tensor/random.h"

namespace ladnn::data {

namespace {

// splitmix64's finaliser: a bijection that scatters nearby inputs (seed, seed + 1, ...) far apart, so
// generators seeded from consecutive epochs or sample indices are unrelated.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t mix_seed(uint64_t seed, int epoch, uint64_t stream) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(static_cast<int64_t>(epoch)));
  return splitmix64(h ^ stream);
}

// The shuffle's stream id; sample indices (the augmentation streams) are far below it.
constexpr uint64_t kShuffleStream = ~uint64_t{0};

}  // namespace

Loader::Loader(std::vector<Sample> samples, LoaderOptions options)
    : samples_(std::move(samples)), options_(std::move(options)) {
  const LoaderOptions& o = options_;
  check(o.batch_size >= 1, "Loader: batch_size must be >= 1, got " + std::to_string(o.batch_size));
  check(o.image_size >= 1, "Loader: image_size must be >= 1, got " + std::to_string(o.image_size));
  check(o.workers >= 0 && o.workers <= 256,
        "Loader: workers must be in [0, 256], got " + std::to_string(o.workers));
  check(o.prefetch >= 1, "Loader: prefetch must be >= 1, got " + std::to_string(o.prefetch));
  check(o.cache_bytes >= 0, "Loader: cache_bytes must be >= 0, got " + std::to_string(o.cache_bytes));
  if (o.cache_bytes > 0) cache_.resize(samples_.size());
  for (int c = 0; c < 3; ++c)
    check(o.normalize.std[c] > 0.f, "Loader: normalisation std must be positive, got " +
                                        std::to_string(o.normalize.std[c]) + " for channel " +
                                        std::to_string(c));
  if (o.augment) {
    // Validates the augmentation ranges now rather than in a worker.
    Generator probe(0);
    sample_affine(probe, o.augment_config);
  }
  threads_.reserve(o.workers);
  for (int i = 0; i < o.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    ++generation_;  // a worker mid-batch abandons it at the next image
  }
  work_cv_.notify_all();
  ready_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

int64_t Loader::num_batches() const {
  const int64_t n = static_cast<int64_t>(samples_.size());
  const int64_t bs = options_.batch_size;
  return options_.drop_last ? n / bs : (n + bs - 1) / bs;
}

std::vector<int64_t> Loader::epoch_order(int epoch) const {
  std::vector<int64_t> order(samples_.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  if (options_.shuffle && order.size() > 1) {
    // Fisher–Yates with the framework's generator (rejection-sampled below(), so the permutation is
    // the same on every platform).
    Generator gen(mix_seed(options_.seed, epoch, kShuffleStream));
    for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[gen.below(i + 1)]);
  }
  return order;
}

Affine Loader::augmentation(int epoch, int64_t index) const {
  if (!options_.augment) return Affine{};
  Generator gen(mix_seed(options_.seed, epoch, static_cast<uint64_t>(index)));
  return sample_affine(gen, options_.augment_config);
}

void Loader::start_epoch(int epoch) {
  std::vector<int64_t> order = epoch_order(epoch);  // outside the lock: O(n), no shared state
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++generation_;
    ready_.clear();
    order_ = std::move(order);
    epoch_ = epoch;
    next_claim_ = 0;
    next_deliver_ = 0;
    skipped_ = 0;
    started_ = true;
    active_ = true;
  }
  work_cv_.notify_all();
}

Loader::Job Loader::make_job(int64_t b) const {
  const int64_t bs = options_.batch_size;
  const int64_t begin = b * bs;
  const int64_t end = std::min<int64_t>(begin + bs, static_cast<int64_t>(order_.size()));
  return Job{b, epoch_, generation_.load(),
             std::vector<int64_t>(order_.begin() + begin, order_.begin() + end)};
}

Loader::Slot Loader::build(const Job& job) const {
  Slot slot;
  try {
    const int64_t n = static_cast<int64_t>(job.indices.size());
    const int S = options_.image_size;
    const size_t image_floats = static_cast<size_t>(3) * S * S;
    Batch& b = slot.batch;
    Tensor images = Tensor::empty({n, 3, S, S}, DType::Float32);
    std::vector<double> covid, lesions, mask;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      // Abandoned by start_epoch or the destructor: stop at the next image, the result is dropped.
      if (generation_.load(std::memory_order_relaxed) != job.generation) return slot;
      const int64_t index = job.indices[i];
      const Sample& s = samples_[index];
      std::shared_ptr<const Image> img;
      try {
        img = decoded(index);
      } catch (const std::runtime_error& e) {
        if (!options_.skip_bad) throw;
        std::fprintf(stderr, "ladnn: warning: skipping bad image '%s' (epoch %d): %s\n", s.name.c_str(),
                     job.epoch, e.what());
        ++slot.skipped;
        continue;
      }
      transform_into(*img, S, augmentation(job.epoch, index), options_.normalize,
                     images.data<float>() + kept * image_floats);
      covid.push_back(s.covid);
      lesions.insert(lesions.end(), s.lesions.begin(), s.lesions.end());
      mask.push_back(s.has_lesion_labels ? 1.0 : 0.0);
      b.names.push_back(s.name);
      b.indices.push_back(index);
      ++kept;
    }
    b.images = kept == n ? images : images.narrow(0, 0, kept).clone();
    b.covid = Tensor::from_vector(covid, {kept, 1});
    b.lesions = Tensor::from_vector(lesions, {kept, 5});
    b.lesion_mask = Tensor::from_vector(mask, {kept, 1});
  } catch (const std::exception& e) {
    slot.error =
        std::make_exception_ptr(std::runtime_error("Loader: epoch " + std::to_string(job.epoch) + ", batch " +
                                                   std::to_string(job.batch_index) + ": " + e.what()));
  } catch (...) {
    slot.error = std::current_exception();
  }
  return slot;
}

std::shared_ptr<const Image> Loader::decoded(int64_t index) const {
  if (cache_.empty()) return std::make_shared<const Image>(read_image(samples_[index].path));
  {
    std::lock_guard<std::mutex> lk(cache_mu_);
    if (cache_[index]) return cache_[index];
  }
  // Two workers may decode the same image at once (it is in two batches only across epochs, so
  // rarely); the first to finish keeps its copy, the other's is used once and dropped.
  auto img = std::make_shared<const Image>(read_image(samples_[index].path));
  const int64_t bytes = static_cast<int64_t>(img->pixels.size());
  std::lock_guard<std::mutex> lk(cache_mu_);
  if (cache_[index]) return cache_[index];
  if (cache_used_ + bytes <= options_.cache_bytes) {
    cache_[index] = img;
    cache_used_ += bytes;
  }
  return img;
}

int64_t Loader::cached_images() const {
  std::lock_guard<std::mutex> lk(cache_mu_);
  return std::count_if(cache_.begin(), cache_.end(), [](const auto& p) { return p != nullptr; });
}

int64_t Loader::cached_bytes() const {
  std::lock_guard<std::mutex> lk(cache_mu_);
  return cache_used_;
}

void Loader::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    work_cv_.wait(lk, [this] {
      return stop_ ||
             (active_ && next_claim_ < num_batches() && next_claim_ < next_deliver_ + options_.prefetch);
    });
    if (stop_) return;
    Job job = make_job(next_claim_++);
    lk.unlock();
    Slot slot = build(job);
    lk.lock();
    if (job.generation == generation_.load() && !stop_) {
      ready_.emplace(job.batch_index, std::move(slot));
      ready_cv_.notify_all();
    }
  }
}

bool Loader::next(Batch& out) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!started_) throw std::logic_error("Loader::next: call start_epoch(epoch) before next()");
  while (true) {
    if (!active_ || next_deliver_ >= num_batches()) {
      active_ = false;
      return false;
    }
    Slot slot;
    if (threads_.empty()) {
      Job job = make_job(next_deliver_);
      lk.unlock();  // building takes long; start_epoch from another thread is not supported anyway
      slot = build(job);
      lk.lock();
    } else {
      const int64_t want = next_deliver_;
      ready_cv_.wait(lk, [&] { return stop_ || ready_.count(want) > 0; });
      if (stop_) return false;
      auto it = ready_.find(want);
      slot = std::move(it->second);
      ready_.erase(it);
    }
    ++next_deliver_;
    lk.unlock();
    work_cv_.notify_all();  // one more batch may be claimed
    lk.lock();
    if (slot.error) {
      // The epoch ends here: drop what was prefetched and stop the workers' current batches.
      active_ = false;
      ++generation_;
      ready_.clear();
      std::rethrow_exception(slot.error);
    }
    skipped_ += slot.skipped;
    if (slot.batch.size() == 0) continue;  // every image of this batch was bad and skipped
    out = std::move(slot.batch);
    return true;
  }
}

}  // namespace ladnn::data
