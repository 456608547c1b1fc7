// cuda/context_switches.cpp — the implementation switches and the TF32 switch of cuda/context.h.
//
// Pure host state, so it is compiled in every build (a CPU-only `ladnn bench --help` can still list and
// parse them). The stream and the library handles are in cuda/context.cu.
//
// Each switch starts "unread" and takes its value from the environment at first use, so a bad value
// fails the first op that needs it, with an error naming the variable — not at program start, and not
// silently. set_impl()/set_tf32() override the environment from then on.
#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/context.h"
#include "cuda/graph.h"

namespace ladnn::cuda {
namespace {

constexpr int kUnread = -1;
constexpr int kFamilies = 4;

std::atomic<int> g_impl[kFamilies] = {{kUnread}, {kUnread}, {kUnread}, {kUnread}};
std::atomic<int> g_tf32{kUnread};
std::atomic<int> g_deterministic{kUnread};
std::atomic<int> g_conv1x1{kUnread};
std::atomic<int> g_graph_plan{kUnread};
std::atomic<int> g_fused_conv{kUnread};
std::atomic<int> g_bn_kernel{kUnread};
std::atomic<int> g_pdl{kUnread};
std::atomic<int> g_fold{kUnread};
std::atomic<int> g_log{kUnread};  // LADNN_CUDNN_LOG (not a switch of the snapshot: it changes no result)

int index_of(Family f) {
  return static_cast<int>(f);
}

const char* env_name(Family f) {
  switch (f) {
    case Family::Conv:
      return "LADNN_CONV";
    case Family::BatchNorm:
      return "LADNN_BN";
    case Family::Pool:
      return "LADNN_POOL";
    case Family::Gemm:
      return "LADNN_GEMM";
  }
  return "?";
}

// Lower case, surrounding blanks removed: "  cuDNN " -> "cudnn".
std::string normalised(const std::string& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  std::string out = s.substr(b, e - b);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// 1 or 0 from a boolean switch's value; throws naming the variable otherwise.
int parse_on_off(const char* name, const std::string& value) {
  const std::string s = normalised(value);
  if (s == "1" || s == "on" || s == "true" || s == "yes") return 1;
  if (s == "0" || s == "off" || s == "false" || s == "no") return 0;
  throw std::invalid_argument(std::string(name) + "=\"" + value +
                              "\" is not a switch; use 1 or 0 (on/off, true/false, yes/no)");
}

// 1 or 0 from a boolean environment variable (unset or empty: `fallback`); throws naming it otherwise.
int env_switch(const char* name, int fallback) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  return parse_on_off(name, env);
}

/// A switch's value: what `slot` holds, or — at first use — `read()` (from the environment; it may
/// throw, naming the variable). A set_*() that ran meanwhile wins over the environment.
template <typename Read>
int read_once(std::atomic<int>& slot, Read read) {
  const int v = slot.load(std::memory_order_relaxed);
  if (v != kUnread) return v;
  const int parsed = read();
  int expected = kUnread;
  return slot.compare_exchange_strong(expected, parsed) ? parsed : expected;
}

/// A switch with named modes (LADNN_CONV1X1, LADNN_FUSED_CONV, LADNN_BN_KERNEL): its names, the
/// environment variable, the mode when it is unset, and the words of its error, which reads
/// `VAR="value" is not <what>; use <choices>`.
template <typename Mode, std::size_t N>
struct ModeSwitch {
  std::array<std::pair<Mode, const char*>, N> names;
  const char* env;
  Mode fallback;
  const char* what;
  const char* choices;
};

template <typename Mode, std::size_t N>
const char* mode_name(const ModeSwitch<Mode, N>& sw, Mode mode) {
  for (const auto& [m, name] : sw.names)
    if (m == mode) return name;
  return "?";
}

/// The mode named by `value` (any case, blanks around); throws naming `where` and the value otherwise.
template <typename Mode, std::size_t N>
Mode parse_mode(const ModeSwitch<Mode, N>& sw, const std::string& value, const char* where) {
  const std::string v = normalised(value);
  for (const auto& [m, name] : sw.names)
    if (v == name) return m;
  throw std::invalid_argument(std::string(where) + "=\"" + value + "\" is not " + sw.what + "; use " + sw.choices);
}

/// The switch's value: set_*()'s, or at first use the environment's (the fallback when unset).
template <typename Mode, std::size_t N>
Mode read_mode(std::atomic<int>& slot, const ModeSwitch<Mode, N>& sw) {
  return static_cast<Mode>(read_once(slot, [&sw] {
    const char* env = std::getenv(sw.env);
    return static_cast<int>((env && *env) ? parse_mode(sw, env, sw.env) : sw.fallback);
  }));
}

const ModeSwitch<Conv1x1, 3> kConv1x1{
    {{{Conv1x1::Auto, "auto"}, {Conv1x1::Cudnn, "cudnn"}, {Conv1x1::Cublas, "cublas"}}},
    "LADNN_CONV1X1",
    Conv1x1::Auto,
    "a mode for pointwise convolutions",
    "auto (time both per shape, the default), cudnn or cublas"};
const ModeSwitch<FusedConv, 3> kFusedConv{
    {{{FusedConv::Off, "off"}, {FusedConv::On, "on"}, {FusedConv::Auto, "auto"}}},
    "LADNN_FUSED_CONV",
    FusedConv::Auto,
    "a mode for the fused inference convolution",
    "off, on (wherever it applies) or auto (the default: time it against the unfused ops per shape)"};
const ModeSwitch<BnKernel, 4> kBnKernel{
    {{{BnKernel::Auto, "auto"},
      {BnKernel::Channel, "channel"},
      {BnKernel::Split, "split"},
      {BnKernel::Cluster, "cluster"}}},
    "LADNN_BN_KERNEL",
    BnKernel::Auto,
    "a layout for the native BatchNorm kernels",
    "auto (by shape, the default), channel (one block per channel), split (a channel over several blocks) or "
    "cluster (a channel's values in the registers of a block or a cluster of blocks)"};

}  // namespace

Impl default_impl(Family f) {
  // BatchNorm defaults to ours: only the native kernels fuse the ReLU that follows 168 of DenseNet-169's
  // 169 BatchNorms (cuDNN has no BN-activation for NCHW float32), and on the H200 they made the graphed
  // DenseNet-169 training step 3% (batch 32) to 14% (batch 64) faster than cuDNN's (bench/RESULTS-gpu.md).
  return f == Family::BatchNorm ? Impl::Native : Impl::Library;
}

const char* family_name(Family f) {
  switch (f) {
    case Family::Conv:
      return "conv";
    case Family::BatchNorm:
      return "bn";
    case Family::Pool:
      return "pool";
    case Family::Gemm:
      return "gemm";
  }
  return "?";
}

const char* impl_name(Family f, Impl impl) {
  if (impl == Impl::Native) return "native";
  return f == Family::Gemm ? "cublas" : "cudnn";
}

Impl parse_impl(Family f, const std::string& value, const char* where) {
  const std::string v = normalised(value);
  if (v == impl_name(f, Impl::Library) || v == "library") return Impl::Library;
  if (v == "native") return Impl::Native;
  const bool native_default = default_impl(f) == Impl::Native;
  throw std::invalid_argument(std::string(where) + "=\"" + value + "\" is not an implementation of " +
                              family_name(f) + "; use " + impl_name(f, Impl::Library) + " (the library" +
                              (native_default ? "" : ", the default") + ") or native (ladnn's own kernel" +
                              (native_default ? ", the default" : "") + ")");
}

Impl impl(Family f) {
  return static_cast<Impl>(read_once(g_impl[index_of(f)], [f] {
    const char* env = std::getenv(env_name(f));
    return static_cast<int>((env && *env) ? parse_impl(f, env, env_name(f)) : default_impl(f));
  }));
}

void set_impl(Family f, Impl impl) {
  g_impl[index_of(f)].store(static_cast<int>(impl));
}

bool tf32_enabled() {
  // TF32 on by default, as cuDNN and PyTorch's convolutions.
  return read_once(g_tf32, [] { return env_switch("LADNN_TF32", 1); }) == 1;
}

bool deterministic() {
  return read_once(g_deterministic, [] { return env_switch("LADNN_DETERMINISTIC", 0); }) == 1;
}

void set_deterministic(bool on) {
  g_deterministic.store(on ? 1 : 0);
}

void set_tf32(bool on) {
  g_tf32.store(on ? 1 : 0);
}

const char* conv1x1_name(Conv1x1 mode) {
  return mode_name(kConv1x1, mode);
}
Conv1x1 parse_conv1x1(const std::string& value, const char* where) {
  return parse_mode(kConv1x1, value, where);
}
Conv1x1 conv1x1() {
  return read_mode(g_conv1x1, kConv1x1);
}
void set_conv1x1(Conv1x1 mode) {
  g_conv1x1.store(static_cast<int>(mode));
}

const char* fused_conv_name(FusedConv mode) {
  return mode_name(kFusedConv, mode);
}
FusedConv parse_fused_conv(const std::string& value, const char* where) {
  return parse_mode(kFusedConv, value, where);
}
FusedConv fused_conv() {
  return read_mode(g_fused_conv, kFusedConv);
}
void set_fused_conv(FusedConv mode) {
  g_fused_conv.store(static_cast<int>(mode));
}

const char* bn_kernel_name(BnKernel mode) {
  return mode_name(kBnKernel, mode);
}
BnKernel parse_bn_kernel(const std::string& value, const char* where) {
  return parse_mode(kBnKernel, value, where);
}
BnKernel bn_kernel() {
  return read_mode(g_bn_kernel, kBnKernel);
}
void set_bn_kernel(BnKernel mode) {
  g_bn_kernel.store(static_cast<int>(mode));
}

bool graph_memory_plan() {
  return read_once(g_graph_plan, [] { return env_switch("LADNN_GRAPH_PLAN", 0); }) == 1;
}

void set_graph_memory_plan(bool on) {
  g_graph_plan.store(on ? 1 : 0);
}

bool programmatic_launch() {
  return read_once(g_pdl, [] { return env_switch("LADNN_PDL", 0); }) == 1;
}

void set_programmatic_launch(bool on) {
  g_pdl.store(on ? 1 : 0);
}

bool fold_norm1() {
  return read_once(g_fold, [] { return env_switch("LADNN_NORM1_FOLD", 0); }) == 1;
}

void set_fold_norm1(bool on) {
  g_fold.store(on ? 1 : 0);
}

bool log_choices() {
  return read_once(g_log, [] {
           const char* v = std::getenv("LADNN_CUDNN_LOG");
           return v != nullptr && v[0] != '\0' && v[0] != '0' ? 1 : 0;
         }) == 1;
}

void set_log_choices(bool on) {
  g_log.store(on ? 1 : 0);
}

SwitchSnapshot save_switches() {
  SwitchSnapshot s;
  for (Family f : {Family::Conv, Family::BatchNorm, Family::Pool, Family::Gemm})
    s.impl[index_of(f)] = static_cast<int>(impl(f));
  s.tf32 = tf32_enabled() ? 1 : 0;
  s.deterministic = deterministic() ? 1 : 0;
  s.conv1x1 = static_cast<int>(conv1x1());
  s.graph_plan = graph_memory_plan() ? 1 : 0;
  s.fused_conv = static_cast<int>(fused_conv());
  s.bn_kernel = static_cast<int>(bn_kernel());
  s.pdl = programmatic_launch() ? 1 : 0;
  s.fold = fold_norm1() ? 1 : 0;
  return s;
}

void restore_switches(const SwitchSnapshot& s) {
  for (int i = 0; i < kFamilies; ++i) g_impl[i].store(s.impl[i]);
  g_tf32.store(s.tf32);
  g_deterministic.store(s.deterministic);
  g_conv1x1.store(s.conv1x1);
  g_graph_plan.store(s.graph_plan);
  g_fused_conv.store(s.fused_conv);
  g_bn_kernel.store(s.bn_kernel);
  g_pdl.store(s.pdl);
  g_fold.store(s.fold);
}

void set_switch(const std::string& name, const std::string& value) {
  for (Family f : {Family::Conv, Family::BatchNorm, Family::Pool, Family::Gemm})
    if (name == env_name(f)) return set_impl(f, parse_impl(f, value, env_name(f)));
  if (name == "LADNN_TF32") return set_tf32(parse_on_off("LADNN_TF32", value) == 1);
  if (name == "LADNN_DETERMINISTIC")
    return set_deterministic(parse_on_off("LADNN_DETERMINISTIC", value) == 1);
  if (name == "LADNN_GRAPH_PLAN") return set_graph_memory_plan(parse_on_off("LADNN_GRAPH_PLAN", value) == 1);
  if (name == "LADNN_PDL") return set_programmatic_launch(parse_on_off("LADNN_PDL", value) == 1);
  if (name == "LADNN_NORM1_FOLD") return set_fold_norm1(parse_on_off("LADNN_NORM1_FOLD", value) == 1);
  if (name == kConv1x1.env) return set_conv1x1(parse_mode(kConv1x1, value, kConv1x1.env));
  if (name == kFusedConv.env) return set_fused_conv(parse_mode(kFusedConv, value, kFusedConv.env));
  if (name == kBnKernel.env) return set_bn_kernel(parse_mode(kBnKernel, value, kBnKernel.env));
  throw std::invalid_argument(
      "\"" + name +
      "\" is not a switch; use LADNN_CONV, LADNN_BN, LADNN_POOL, LADNN_GEMM, LADNN_TF32, "
      "LADNN_DETERMINISTIC, LADNN_GRAPH_PLAN, LADNN_PDL, LADNN_NORM1_FOLD, LADNN_CONV1X1, LADNN_FUSED_CONV "
      "or LADNN_BN_KERNEL");
}

void apply_switch_set(const SwitchSet& set) {
  for (const auto& [name, value] : set.switches) set_switch(name, value);
}

std::vector<SwitchSet> parse_switch_sets(const std::string& spec, const std::string& where) {
  std::vector<SwitchSet> out;
  std::stringstream sets(spec);
  std::string text;
  while (std::getline(sets, text, ';')) {
    SwitchSet set;
    std::stringstream items(text);
    std::string item;
    while (std::getline(items, item, ',')) {
      if (item.empty()) continue;
      const std::size_t eq = item.find('=');
      if (eq == std::string::npos || eq == 0)
        throw std::invalid_argument(where + ": \"" + item + "\" is not NAME=VALUE (e.g. LADNN_PDL=1)");
      set.switches.emplace_back(item.substr(0, eq), item.substr(eq + 1));
      set.label += (set.label.empty() ? "" : ",") + item;
    }
    if (set.switches.empty()) continue;
    const SwitchSnapshot saved = save_switches();
    try {
      apply_switch_set(set);
    } catch (const std::invalid_argument& e) {
      restore_switches(saved);
      throw std::invalid_argument(where + ": " + e.what());
    }
    restore_switches(saved);
    out.push_back(std::move(set));
  }
  return out;
}

std::string describe_switches() {
  std::ostringstream out;
  auto line = [&](const std::string& name, const std::string& value, const std::string& note) {
    out << "  " << name << std::string(name.size() < 15 ? 15 - name.size() : 1, ' ') << value
        << std::string(value.size() < 8 ? 8 - value.size() : 1, ' ') << "(" << note << ")\n";
  };
  // An invalid environment value throws from the query: say so on its line.
  auto guarded = [&](const std::string& name, const std::string& note, auto value) {
    try {
      line(name, value(), note);
    } catch (const std::exception& e) {
      line(name, "invalid", e.what());
    }
  };
  for (Family f : {Family::Conv, Family::BatchNorm, Family::Pool, Family::Gemm})
    guarded(family_name(f), std::string(env_name(f)) + "; default " + impl_name(f, default_impl(f)),
            [f] { return std::string(impl_name(f, impl(f))); });
  guarded("conv1x1", "LADNN_CONV1X1; default auto: cuDNN or cuBLAS, timed per shape",
          [] { return std::string(conv1x1_name(conv1x1())); });
  guarded("fused-conv",
          "LADNN_FUSED_CONV; default auto: our conv kernels where they time faster (BatchNorms fused in; "
          "TF32 backward)",
          [] { return std::string(fused_conv_name(fused_conv())); });
  guarded("bn-kernel", "LADNN_BN_KERNEL; default auto: native BatchNorm as one kernel per channel where it fits",
          [] { return std::string(bn_kernel_name(bn_kernel())); });
  guarded("graph-plan", "LADNN_GRAPH_PLAN; default off: one planned arena per CUDA graph",
          [] { return std::string(graph_memory_plan() ? "on" : "off"); });
  guarded("pdl", "LADNN_PDL; default off: programmatic dependent launch of our kernels (sm_90+)",
          [] { return std::string(programmatic_launch() ? "on" : "off"); });
  guarded("norm1-fold",
          "LADNN_NORM1_FOLD; default off: a training dense layer's norm1-ReLU applied inside conv1",
          [] { return std::string(fold_norm1() ? "on" : "off"); });
  guarded("tf32", "LADNN_TF32; default on", [] { return std::string(tf32_enabled() ? "on" : "off"); });
  guarded("deterministic", "LADNN_DETERMINISTIC; default off",
          [] { return std::string(deterministic() ? "on" : "off"); });
  return out.str();
}

}  // namespace ladnn::cuda
