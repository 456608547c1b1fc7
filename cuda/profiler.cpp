// cuda/profiler.cpp — NVTX ranges and the per-op CUDA-event timer of cuda/profiler.h.
//
// Compiled by the host compiler in every build. With the CUDA backend it uses the CUDA runtime and the
// header-only NVTX3 that ships with the toolkit (<nvtx3/nvToolsExt.h>: no library to link; it looks
// for an attached tool through dlopen the first time a range is pushed). Without the backend, ranges
// only count their nesting depth and the table stays empty.
//
// Timing design: every timed range takes a (start, stop) event pair from a pool, records both on the
// framework stream and queues itself as pending. Nothing waits until someone asks for the numbers
// (stats/table/print), or the queue reaches kMaxPending, when the pending pairs are read
// (cudaEventSynchronize + cudaEventElapsedTime) and returned to the pool. So a timed step costs two
// event records per op and no synchronisation per op.
#include "cuda/profiler.h"

#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#ifdef LADNN_HAVE_CUDA
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include "cuda/check.h"
#include "cuda/context.h"
#endif
#include "cuda/runtime.h"

namespace ladnn::cuda {
namespace {

// Pending event pairs read at once when the queue gets this long (bounds the pool; a flush waits for
// the GPU to reach the newest queued op, which only happens while profiling).
constexpr std::size_t kMaxPending = 1024;

thread_local int t_depth = 0;  // OpRanges open on this thread

bool env_enabled() {
  const char* v = std::getenv("LADNN_PROFILE");
  if (v == nullptr) return false;
  return std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0 || std::strcmp(v, "on") == 0;
}

// -1: not read yet, 0 off, 1 on.
std::atomic<int> g_enabled{-1};

struct Pending {
  const char* op;
  const char* impl;
  int slot;
  bool nested;
};

struct State {
  std::mutex mu;
  std::map<std::pair<std::string, std::string>, profiler::OpStat> stats;
#ifdef LADNN_HAVE_CUDA
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> events;  // the pool, indexed by slot
#endif
  std::vector<int> free_slots;
  std::vector<Pending> pending;
  // Ranges timed inside graph captures: their events are nodes of a graph, recorded by each replay,
  // so their slots are never returned to the pool (a live graph may record them again).
  bool capture_timing = false;
  std::vector<Pending> captured;
  bool print_at_exit = false;  // LADNN_PROFILE=1: print the table when the program ends
  bool atexit_registered = false;
};

// Never destroyed: the at-exit printer may run after static destructors have started.
State& state() {
  static State* s = new State();
  return *s;
}

#ifdef LADNN_HAVE_CUDA
// Adds one timed call of (op, impl).
void add_locked(State& s, const Pending& p, float ms) {
  profiler::OpStat& st = s.stats[{p.op, p.impl}];
  if (st.calls == 0) {
    st.op = p.op;
    st.impl = p.impl;
  }
  st.calls += 1;
  st.total_ms += ms;
  if (!p.nested) st.outermost_ms += ms;
}

// Reads every pending pair into the statistics and frees the slots. Errors (a sticky CUDA error, a
// context already torn down at exit) drop the pending records: timing must never break the program.
void flush_locked(State& s) {
  for (const Pending& p : s.pending) {
    auto [start, stop] = s.events[p.slot];
    float ms = 0.0f;
    if (cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess) {
      add_locked(s, p, ms);
    } else {
      cudaGetLastError();  // clear a non-sticky error so the next CUDA call starts clean
    }
    s.free_slots.push_back(p.slot);
  }
  s.pending.clear();
}

int acquire_slot_locked(State& s) {
  if (!s.free_slots.empty()) {
    const int slot = s.free_slots.back();
    s.free_slots.pop_back();
    return slot;
  }
  cudaEvent_t a = nullptr, b = nullptr;
  CUDA_CHECK(cudaEventCreate(&a));
  if (cudaEventCreate(&b) != cudaSuccess) {
    cudaEventDestroy(a);
    throw Error("profiler: cudaEventCreate failed");
  }
  s.events.emplace_back(a, b);
  return static_cast<int>(s.events.size()) - 1;
}

void print_at_exit() {
  try {
    profiler::print(std::cerr);
  } catch (...) {
    // at exit there is nobody left to tell
  }
}
#endif

}  // namespace

// ---- profiler --------------------------------------------------------------------------------------

namespace profiler {

bool enabled() {
  int v = g_enabled.load(std::memory_order_relaxed);
  if (v < 0) {
    const bool on = env_enabled();
    int expected = -1;
    if (g_enabled.compare_exchange_strong(expected, on ? 1 : 0) && on) {
      std::lock_guard<std::mutex> lock(state().mu);
      state().print_at_exit = true;
    }
    v = g_enabled.load(std::memory_order_relaxed);
  }
  return v == 1;
}

void set_enabled(bool on) {
  enabled();  // read the environment first, so it cannot override this call later
  g_enabled.store(on ? 1 : 0);
}

void reset() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
#ifdef LADNN_HAVE_CUDA
  flush_locked(s);
#endif
  s.stats.clear();
  s.captured.clear();  // earlier captures' ranges too (their slots stay out of the pool, as below)
}

std::vector<OpStat> stats() {
  State& s = state();
  std::vector<OpStat> out;
  {
    std::lock_guard<std::mutex> lock(s.mu);
#ifdef LADNN_HAVE_CUDA
    flush_locked(s);
#endif
    for (const auto& kv : s.stats) out.push_back(kv.second);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const OpStat& a, const OpStat& b) { return a.total_ms > b.total_ms; });
  return out;
}

void set_capture_timing(bool on) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (on) s.captured.clear();  // the slots stay out of the pool: an older graph may still record them
  s.capture_timing = on;
}

void begin_capture() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  // Whether or not this capture times its ranges, collect_captured() reads only this capture's: the
  // ranges of an earlier timed capture (a profiled trainer's, say) must not be read after a plain one.
  // The slots stay out of the pool, as in set_capture_timing.
  s.captured.clear();
}

bool capture_timing() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.capture_timing;
}

std::size_t collect_captured() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  std::size_t read = 0;
#ifdef LADNN_HAVE_CUDA
  if (!s.captured.empty()) CUDA_CHECK(cudaStreamSynchronize(stream()));
  for (const Pending& p : s.captured) {
    auto [start, stop] = s.events[p.slot];
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    add_locked(s, p, ms);
    ++read;
  }
#endif
  return read;
}

std::string kernel_display_name(const char* mangled) {
  if (!mangled) return "(unnamed)";
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : mangled;
  std::free(demangled);
  // Cut the parameter list: the last '(' outside template brackets ("(anonymous namespace)::k(int)").
  int depth = 0;
  std::size_t cut = std::string::npos;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '<') ++depth;
    if (name[i] == '>' && depth > 0) --depth;
    if (name[i] == '(' && depth == 0) cut = i;
  }
  if (cut != std::string::npos && cut > 0) name.resize(cut);
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  return name;
}

std::string table() {
  const std::vector<OpStat> rows = stats();
  if (rows.empty()) return "";
  double outer_total = 0.0;
  std::size_t op_width = 2;
  for (const OpStat& r : rows) {
    outer_total += r.outermost_ms;
    op_width = std::max(op_width, r.op.size());
  }
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-*s  %-7s %8s %12s %10s %7s\n", static_cast<int>(op_width), "op", "impl",
                "calls", "total ms", "mean ms", "share");
  out += line;
  for (const OpStat& r : rows) {
    const double share = outer_total > 0.0 ? 100.0 * r.total_ms / outer_total : 0.0;
    std::snprintf(line, sizeof line, "%-*s  %-7s %8lld %12.3f %10.4f %6.1f%%\n", static_cast<int>(op_width),
                  r.op.c_str(), r.impl.c_str(), static_cast<long long>(r.calls), r.total_ms,
                  r.total_ms / static_cast<double>(r.calls), share);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-*s  %-7s %8s %12.3f\n", static_cast<int>(op_width), "total (outermost)", "",
                "", outer_total);
  out += line;
  return out;
}

void print(std::ostream& os) {
  const std::string t = table();
  if (t.empty()) return;
  os << "ladnn per-op GPU time (CUDA events on the framework stream):\n" << t;
  os.flush();
}

}  // namespace profiler

// ---- OpRange ---------------------------------------------------------------------------------------

OpRange::OpRange(const char* op, const char* impl) : op_(op), impl_(impl) {
  nested_ = t_depth > 0;
  ++t_depth;
#ifdef LADNN_HAVE_CUDA
  char name[128];
  std::snprintf(name, sizeof name, "%s/%s", op, impl);
  nvtxRangePushA(name);
  pushed_ = true;
  if (!profiler::enabled()) return;
  try {
    // During a stream capture an event record is a graph node: timed only with capture timing on,
    // as an external event-record node that every replay records.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream(), &capture));
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (capture != cudaStreamCaptureStatusNone && !(capture == cudaStreamCaptureStatusActive && s.capture_timing))
      return;
    captured_ = capture != cudaStreamCaptureStatusNone;
    const int slot = acquire_slot_locked(s);
    const cudaError_t rec = captured_
                                ? cudaEventRecordWithFlags(s.events[slot].first, stream(), cudaEventRecordExternal)
                                : cudaEventRecord(s.events[slot].first, stream());
    if (rec != cudaSuccess) {
      cudaGetLastError();
      s.free_slots.push_back(slot);
      captured_ = false;
      return;
    }
    slot_ = slot;
    if (s.print_at_exit && !s.atexit_registered) {
      // Registered after the CUDA runtime initialised, so it runs before the runtime's own teardown.
      std::atexit(print_at_exit);
      s.atexit_registered = true;
    }
  } catch (...) {
    slot_ = -1;  // timing is best effort; the op itself goes on
  }
#endif
}

OpRange::~OpRange() {
  --t_depth;
#ifdef LADNN_HAVE_CUDA
  if (slot_ >= 0) {
    try {
      State& s = state();
      std::lock_guard<std::mutex> lock(s.mu);
      if (captured_) {
        // The slot belongs to the graph now, even if this record failed (its start is a node).
        if (cudaEventRecordWithFlags(s.events[slot_].second, stream(), cudaEventRecordExternal) == cudaSuccess)
          s.captured.push_back({op_, impl_, slot_, nested_});
        else
          cudaGetLastError();
      } else if (cudaEventRecord(s.events[slot_].second, stream()) == cudaSuccess) {
        s.pending.push_back({op_, impl_, slot_, nested_});
        if (s.pending.size() >= kMaxPending) flush_locked(s);
      } else {
        cudaGetLastError();
        s.free_slots.push_back(slot_);
      }
    } catch (...) {
      // a destructor never throws
    }
  }
  if (pushed_) nvtxRangePop();
#endif
}

// ---- EventTimer ------------------------------------------------------------------------------------

#ifdef LADNN_HAVE_CUDA
EventTimer::EventTimer() {
  if (!available()) throw std::runtime_error("EventTimer: " + unavailable_reason());
  cudaEvent_t a = nullptr, b = nullptr;
  CUDA_CHECK(cudaEventCreate(&a));
  if (cudaEventCreate(&b) != cudaSuccess) {
    cudaEventDestroy(a);
    throw Error("EventTimer: cudaEventCreate failed");
  }
  start_ = a;
  stop_ = b;
}

EventTimer::~EventTimer() {
  if (start_) cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  if (stop_) cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

void EventTimer::start() { CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(start_), stream())); }

void EventTimer::stop() { CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(stop_), stream())); }

double EventTimer::elapsed_ms() {
  float ms = 0.0f;
  CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)));
  CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)));
  return ms;
}
#else
EventTimer::EventTimer() { throw std::runtime_error("EventTimer: " + unavailable_reason()); }
EventTimer::~EventTimer() = default;
void EventTimer::start() {}
void EventTimer::stop() {}
double EventTimer::elapsed_ms() { return 0.0; }
#endif

}  // namespace ladnn::cuda
