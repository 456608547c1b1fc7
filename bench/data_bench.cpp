// bench/data_bench.cpp — how fast the data floor feeds a training step: images per second for
// decode + augment + batch at 224x224 on the COVID-CT training split (425 images, PNG and JPEG).
//
//   ./build/data_bench                      (the data is found as the tests find it: $LADNN_DATA or
//   ./build/data_bench --benchmark_format=json     ../shared/data/covid-ct)
//
// BM_Loader/workers:N   a whole training epoch through Loader (shuffle, augment, batch 32), wall time;
// BM_Loader/cached/workers:N   the same from the second epoch on, with the decoded-image cache filled
//                       (LoaderOptions::cache_bytes; `ladnn train --cache-mb`): transform and batch only;
// BM_Decode             read_image alone, one thread, cycling through the split;
// BM_Transform          the fused resize + affine + flip + normalise of one decoded image, one thread.
// The loader's rate is about workers x 1 / (decode + transform) while the cores last; compare it with
// the training step it feeds (DESIGN.md: ~450 img/s on an H100 for DenseNet-169 at batch 32).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "data/image.h"
#include "data/loader.h"
#include "data/split.h"
#include "data/transforms.h"
#include "tensor/random.h"

namespace {

using namespace ladnn;
using namespace ladnn::data;

// The training split, or empty with `why` set when the data is absent.
const std::vector<Sample>& train_samples(std::string& why) {
  static std::string error;
  static const std::vector<Sample> samples = [] {
    const std::string dir = find_data_dir();
    if (dir.empty()) {
      error = "COVID-CT data not found: set LADNN_DATA or place it at ../shared/data/covid-ct";
      return std::vector<Sample>{};
    }
    try {
      return read_split(dir, "train");
    } catch (const std::exception& e) {
      error = e.what();
      return std::vector<Sample>{};
    }
  }();
  why = error;
  return samples;
}

void run_loader(benchmark::State& state, bool cached) {
  std::string why;
  const std::vector<Sample>& samples = train_samples(why);
  if (samples.empty()) {
    state.SkipWithError(why.c_str());
    return;
  }
  LoaderOptions o;
  o.batch_size = 32;
  o.shuffle = true;
  o.augment = true;
  o.image_size = 224;
  o.workers = static_cast<int>(state.range(0));
  o.seed = 1;
  o.cache_bytes = cached ? int64_t{4} << 30 : 0;
  Loader loader(samples, o);
  int epoch = 0;
  if (cached) {  // an untimed first epoch decodes every image into the cache
    loader.start_epoch(epoch++);
    Batch b;
    while (loader.next(b)) {
    }
    state.counters["cached MiB"] = static_cast<double>(loader.cached_bytes()) / (1 << 20);
  }
  int64_t images = 0;
  for (auto _ : state) {
    loader.start_epoch(epoch++);
    Batch b;
    while (loader.next(b)) {
      images += b.size();
      benchmark::DoNotOptimize(b.images.data<float>());
    }
  }
  state.SetItemsProcessed(images);
  state.counters["img/s"] = benchmark::Counter(static_cast<double>(images), benchmark::Counter::kIsRate);
}
void BM_Loader(benchmark::State& state) { run_loader(state, false); }
void BM_LoaderCached(benchmark::State& state) { run_loader(state, true); }

// Both loader rows: 1 and 2 workers, whole epochs by the wall clock.
void loader_rows(benchmark::internal::Benchmark* b) {
  b->ArgName("workers")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
}
BENCHMARK(BM_Loader)->Apply(loader_rows);
BENCHMARK(BM_LoaderCached)->Name("BM_Loader/cached")->Apply(loader_rows);

void BM_Decode(benchmark::State& state) {
  std::string why;
  const std::vector<Sample>& samples = train_samples(why);
  if (samples.empty()) {
    state.SkipWithError(why.c_str());
    return;
  }
  size_t i = 0;
  int64_t pixels = 0;
  for (auto _ : state) {
    Image img = read_image(samples[i++ % samples.size()].path);
    pixels += static_cast<int64_t>(img.width) * img.height;
    benchmark::DoNotOptimize(img.pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["Mpix/s"] =
      benchmark::Counter(static_cast<double>(pixels) * 1e-6, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

void BM_Transform(benchmark::State& state) {
  std::string why;
  const std::vector<Sample>& samples = train_samples(why);
  if (samples.empty()) {
    state.SkipWithError(why.c_str());
    return;
  }
  const Image img = read_image(samples.front().path);
  std::vector<float> out(3 * 224 * 224);
  Generator gen(0);
  for (auto _ : state) {
    transform_into(img, 224, sample_affine(gen), Normalize::imagenet(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Transform)->Unit(benchmark::kMicrosecond);

}  // namespace
