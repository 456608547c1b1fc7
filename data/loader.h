// data/loader.h — batches of decoded, augmented, normalised images, built ahead on worker threads.
//
//   LoaderOptions opt;
//   opt.batch_size = 32, opt.shuffle = true, opt.augment = true, opt.seed = 1;
//   Loader loader(read_split(dir, "train"), opt);
//   for (int epoch = 0; epoch < epochs; ++epoch) {
//     loader.start_epoch(epoch);
//     Batch batch;
//     while (loader.next(batch)) { ... batch.images (N, 3, 224, 224) ... }
//   }
//
// Determinism. What a batch holds depends only on (seed, epoch, batch index): the epoch's order is a
// permutation drawn from a generator seeded by (seed, epoch), and each image's augmentation from one
// seeded by (seed, epoch, index of the sample in the sample list) — never from a generator shared by
// the workers. So the same seed and epoch give bit-identical batches for any number of workers and any
// thread timing, and a sample gets the same augmentation wherever the shuffle puts it.
//
// Threads. `workers` threads each build whole batches (decode, transform, assemble) and hand them back
// in order through a bounded buffer: at most `prefetch` batches are built or ready beyond the one the
// consumer last took, so memory stays bounded however slow the consumer is. With workers = 0 the
// batch is built inside next() on the calling thread (for debugging; the output is the same).
//
// Decoded-image cache. With cache_bytes > 0 a decoded image is kept (shared by the workers, at most
// cache_bytes of pixels in all, first come first kept) and later epochs only transform it: decoding is
// two thirds of an image's time (data_bench: 1.15 ms decode, 0.62 ms transform on the COVID-CT PNGs),
// so from the second epoch a worker feeds about 3x the images. The batches are the same bits with or
// without it (the cache holds what read_image returned). A bad image is never cached.
//
// Errors. A worker's exception is rethrown by the next() that reaches that batch; the epoch then ends
// (next() returns false until start_epoch). With skip_bad an image that cannot be read or decoded is
// left out with a warning on stderr instead; its batch is smaller by one, and a batch whose images are
// all bad is skipped. The destructor stops and joins the workers at any point, mid-epoch included.
// One thread drives a Loader (start_epoch and next); the workers are its own.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "data/image.h"
#include "data/split.h"
#include "data/transforms.h"
#include "tensor/tensor.h"

namespace ladnn::data {

/// One batch, row i of every tensor describing the same image.
struct Batch {
  Tensor images;                   // (N, 3, S, S) float32, normalised
  Tensor covid;                    // (N, 1) float32: 1 = COVID-19
  Tensor lesions;                  // (N, 5) float32, kLesionNames order; 0 where not labelled
  Tensor lesion_mask;              // (N, 1) float32: 1 where the image has lesion labels
  std::vector<std::string> names;  // N image names, as in the CSV
  std::vector<int64_t> indices;    // N indices into the loader's sample list
  int64_t size() const { return static_cast<int64_t>(names.size()); }
};

struct LoaderOptions {
  int batch_size = 32;
  bool shuffle = false;    // a new permutation each epoch, from (seed, epoch)
  bool augment = false;    // random affine + flip (data/transforms.h), from (seed, epoch, sample)
  int image_size = 224;    // S
  int workers = 2;         // threads building batches; 0 builds in next()
  int prefetch = 3;        // batches built ahead of the consumer, >= 1
  bool drop_last = false;  // leave out a last batch smaller than batch_size
  bool skip_bad = false;   // skip an undecodable image (warning on stderr) instead of throwing
  int64_t cache_bytes = 0; // keep decoded images up to this many bytes of pixels (0: decode every time)
  uint64_t seed = 0;
  AugmentConfig augment_config;
  Normalize normalize = Normalize::imagenet();
};

class Loader {
 public:
  /// Validates the options (std::invalid_argument naming the bad one) and starts the workers.
  Loader(std::vector<Sample> samples, LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// Begins epoch `epoch` (any integer; usually 0, 1, ...), abandoning whatever the previous epoch had
  /// left, and lets the workers start on its first batches.
  void start_epoch(int epoch);
  /// The epoch's next batch in order; false at the end of the epoch. Rethrows a worker's exception
  /// (std::runtime_error naming the epoch, batch and image). std::logic_error before start_epoch.
  bool next(Batch& out);

  /// Batches per epoch (fewer come out when skip_bad skips a whole batch).
  int64_t num_batches() const;
  /// Images skipped as bad so far in the current epoch (batches delivered by next() only).
  int64_t skipped() const { return skipped_; }
  const std::vector<Sample>& samples() const { return samples_; }
  /// Decoded images held by the cache, and their pixel bytes (<= options().cache_bytes).
  int64_t cached_images() const;
  int64_t cached_bytes() const;
  const LoaderOptions& options() const { return options_; }

  /// The epoch's order of sample indices (the identity without shuffle).
  std::vector<int64_t> epoch_order(int epoch) const;
  /// The augmentation sample `index` gets in `epoch` (the identity without augment).
  Affine augmentation(int epoch, int64_t index) const;

 private:
  struct Slot {
    Batch batch;
    std::exception_ptr error;
    int64_t skipped = 0;
  };
  struct Job {
    int64_t batch_index;
    int epoch;
    uint64_t generation;
    std::vector<int64_t> indices;
  };

  void worker_loop();
  Slot build(const Job& job) const;
  /// Sample `index` decoded: from the cache, or read (and cached while the budget lasts). Throws as
  /// read_image does.
  std::shared_ptr<const Image> decoded(int64_t index) const;
  Job make_job(int64_t b) const;  // needs mu_ held (reads order_)

  const std::vector<Sample> samples_;
  const LoaderOptions options_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;      // workers: a batch may be claimed, or stop
  std::condition_variable ready_cv_;     // consumer: a batch is ready
  std::atomic<uint64_t> generation_{0};  // bumped by start_epoch and the destructor; stale work is dropped
  bool stop_ = false;
  bool started_ = false;
  bool active_ = false;
  int epoch_ = 0;
  std::vector<int64_t> order_;
  int64_t next_claim_ = 0;    // next batch index a worker may take
  int64_t next_deliver_ = 0;  // next batch index next() returns
  std::map<int64_t, Slot> ready_;
  int64_t skipped_ = 0;
  std::vector<std::thread> threads_;

  mutable std::mutex cache_mu_;  // guards the two below; never held while decoding
  mutable std::vector<std::shared_ptr<const Image>> cache_;  // by sample index; empty when off
  mutable int64_t cache_used_ = 0;
};

}  // namespace ladnn::data
