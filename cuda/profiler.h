// cuda/profiler.h — NVTX ranges around every GPU op and an optional per-op timer (CUDA events) that
// prints a table like torch.profiler's key_averages():
//
//   op                          impl     calls   total ms    mean ms   share
//   batch_norm_forward_train    cudnn      168     12.416      0.074   21.3%
//   ...
//
// Usage inside an op (one line, first statement after the argument checks; `impl` must be a string
// with static lifetime — a literal or cuda::impl_name(...)):
//
//   ops::BatchNormForward batch_norm_forward_train(...) {
//     OpRange range("batch_norm_forward_train", impl_name(Family::BatchNorm, impl(Family::BatchNorm)));
//     ...
//
// The NVTX range ("batch_norm_forward_train/cudnn") is always pushed: it costs a few nanoseconds when no
// tool listens and shows the op in Nsight Systems / Nsight Compute (`nsys profile ./build/ladnn train`).
// The timer is off by default; LADNN_PROFILE=1 in the environment (read at first use) or
// profiler::set_enabled(true) turns it on. When on, each OpRange records a CUDA event before and after
// the op's work on cuda::stream(); the elapsed times are read lazily (flush) — which synchronises — so
// the timer adds host synchronisation. Ranges opened while the stream is capturing a CUDA graph are
// not timed — unless capture timing is on (set_capture_timing): then each range's two events become
// event-record nodes of the graph (cudaEventRecordExternal), every replay records them, and
// collect_captured() after a replay adds each range's time in that replay to the table. That is the
// per-op profile of a replayed step: GPU time only, no host gaps between ops (an eager step's ranges
// include the host's launch gaps). With LADNN_PROFILE=1 the table is printed to stderr when the
// program exits.
//
// Nested ranges (an op that calls another op) are timed too; their time is also inside the parent's,
// so "share" is each row's total over the summed time of the *outermost* ranges, and nested rows add
// up to more than 100%.
//
// Built with and without the CUDA backend (without it OpRange does nothing and the table is empty).
#pragma once

#include <algorithm>
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <string>
#include <vector>

namespace ladnn::cuda {

namespace profiler {

/// True when the per-op timer records (LADNN_PROFILE=1 at first use, or set_enabled).
bool enabled();
/// Turns the per-op timer on or off (recorded statistics are kept; see reset()).
void set_enabled(bool on);
/// Forgets every recorded statistic (after finishing pending timings) and the ranges of earlier
/// captures (collect_captured() reads none until the next timed capture).
void reset();

struct OpStat {
  std::string op;
  std::string impl;
  int64_t calls = 0;
  double total_ms = 0.0;
  double outermost_ms = 0.0;  // the part of total_ms from calls not nested inside another range
};
/// Every (op, impl) pair recorded so far, largest total first. Reads pending events (synchronises).
std::vector<OpStat> stats();
/// The key-averages table (op, impl, calls, total ms, mean ms, share %); "" when nothing was recorded.
std::string table();

/// With capture timing on (and the timer enabled), ranges opened during a stream capture are timed
/// inside the graph (see above). Off by default. Turning it on, and each cuda::Graph capture while it
/// is on, forgets the ranges of earlier captures (their events stay alive, for graphs that may still
/// record them): collect_captured() reads the latest capture's.
void set_capture_timing(bool on);
bool capture_timing();
/// Called by cuda::Graph as each capture begins: the ranges of earlier captures are forgotten
/// (collect_captured() reads the latest capture's, none when it was captured with capture timing off).
void begin_capture();
/// After a replay of a graph captured with capture timing: waits for the replay and adds each captured
/// range's time in it to the statistics (one call per range per collect). Returns how many ranges were
/// read (0 when the latest capture timed none).
std::size_t collect_captured();

/// A kernel's name as tables show it: demangled, without the parameter list and a leading "void"
/// ("void ns::k<float>(float const*, int)" -> "ns::k<float>"); a C name stays; null -> "(unnamed)".
std::string kernel_display_name(const char* mangled);
/// Writes table() to `os` (with a one-line title), or nothing when nothing was recorded.
void print(std::ostream& os);

}  // namespace profiler

/// RAII: an NVTX range for the lifetime of the object, and a timed interval on cuda::stream() when the
/// per-op timer is on. Never throws from its destructor. Not copyable.
class OpRange {
 public:
  OpRange(const char* op, const char* impl);
  ~OpRange();
  OpRange(const OpRange&) = delete;
  OpRange& operator=(const OpRange&) = delete;

 private:
  const char* op_;
  const char* impl_;
  int slot_ = -1;       // index of this range's event pair in the profiler's pool, -1 when not timed
  bool nested_ = false;  // another OpRange was open on this thread when this one started
  bool pushed_ = false;  // an NVTX range was pushed (popped by the destructor)
  bool captured_ = false;  // timed inside a graph capture (event-record nodes)
};

/// A pair of CUDA events on cuda::stream() for benches and tools that time their own regions without
/// including CUDA headers: start(); ...work...; stop(); elapsed_ms() (waits for the stop event).
/// Without a usable GPU every call throws cuda::Error-like std::runtime_error with the reason.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  void stop();
  /// Milliseconds between start() and stop(); synchronises with the stop event.
  double elapsed_ms();

 private:
  void* start_ = nullptr;  // cudaEvent_t (kept opaque so this header needs no CUDA include)
  void* stop_ = nullptr;
};

/// Milliseconds of one run of `run` on the stream: the fastest of three after a warm-up, as cuDNN's
/// search times its algorithms (the choices between a library call and our kernel use it).
template <typename Run>
double time_best_of_three_ms(Run&& run) {
  run();
  EventTimer timer;
  double best = std::numeric_limits<double>::infinity();
  for (int rep = 0; rep < 3; ++rep) {
    timer.start();
    run();
    timer.stop();
    best = std::min(best, timer.elapsed_ms());
  }
  return best;
}

}  // namespace ladnn::cuda
