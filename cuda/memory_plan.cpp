// cuda/memory_plan.cpp — cuda/memory_plan.h: greedy-by-size placement and the recorder.
#include "cuda/memory_plan.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace ladnn::cuda {
namespace {

std::size_t align_up(std::size_t n, std::size_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

bool overlap_in_time(const PlanBlock& a, const PlanBlock& b) {
  return a.start < b.end && b.start < a.end;
}

}  // namespace

MemoryPlan plan_memory(const std::vector<PlanBlock>& blocks, std::size_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    throw std::invalid_argument("plan_memory: alignment must be a power of two, got " + std::to_string(alignment));
  const std::size_t n = blocks.size();
  MemoryPlan plan;
  plan.offsets.assign(n, 0);
  std::vector<std::size_t> size(n);
  for (std::size_t i = 0; i < n; ++i) size[i] = align_up(std::max<std::size_t>(blocks[i].size, 1), alignment);

  // The live peak: sweep the events (a free at event e ends the block before an allocation at e starts).
  {
    std::vector<std::pair<int64_t, int64_t>> events;  // (event, +size / -size); frees sort first at a tie
    events.reserve(2 * n);
    for (std::size_t i = 0; i < n; ++i) {
      events.emplace_back(blocks[i].start, static_cast<int64_t>(size[i]));
      if (blocks[i].end != std::numeric_limits<int64_t>::max())
        events.emplace_back(blocks[i].end, -static_cast<int64_t>(size[i]));
    }
    std::sort(events.begin(), events.end());
    int64_t live = 0, peak = 0;
    for (const auto& e : events) peak = std::max(peak, live += e.second);
    plan.live_peak_bytes = static_cast<std::size_t>(peak);
  }

  // Largest first; among equal sizes the earlier one first (a stable, reproducible order).
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return size[a] > size[b]; });

  std::vector<std::size_t> placed;  // indices already given an offset
  placed.reserve(n);
  std::vector<std::pair<std::size_t, std::size_t>> busy;  // (offset, end) of placed blocks alive with i
  for (std::size_t i : order) {
    busy.clear();
    for (std::size_t j : placed)
      if (overlap_in_time(blocks[i], blocks[j])) busy.emplace_back(plan.offsets[j], plan.offsets[j] + size[j]);
    std::sort(busy.begin(), busy.end());
    // The smallest gap between busy ranges that holds the block; else just after the last one.
    std::size_t best = 0, best_gap = std::numeric_limits<std::size_t>::max(), cursor = 0;
    bool found = false;
    for (const auto& [lo, hi] : busy) {
      if (lo > cursor && lo - cursor >= size[i] && lo - cursor < best_gap) {
        best = cursor;
        best_gap = lo - cursor;
        found = true;
      }
      cursor = std::max(cursor, hi);
    }
    plan.offsets[i] = found ? best : cursor;
    plan.arena_bytes = std::max(plan.arena_bytes, plan.offsets[i] + size[i]);
    placed.push_back(i);
  }
  return plan;
}

bool plan_is_valid(const std::vector<PlanBlock>& blocks, const MemoryPlan& plan, std::size_t alignment) {
  if (plan.offsets.size() != blocks.size()) return false;
  const std::size_t n = blocks.size();
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t si = align_up(std::max<std::size_t>(blocks[i].size, 1), alignment);
    if (plan.offsets[i] % alignment != 0 || plan.offsets[i] + si > plan.arena_bytes) return false;
    for (std::size_t j = i + 1; j < n; ++j) {
      if (!overlap_in_time(blocks[i], blocks[j])) continue;
      const std::size_t sj = align_up(std::max<std::size_t>(blocks[j].size, 1), alignment);
      if (plan.offsets[i] < plan.offsets[j] + sj && plan.offsets[j] < plan.offsets[i] + si) return false;
    }
  }
  return true;
}

void PlanRecorder::allocated(const void* id, std::size_t size) {
  PlanBlock b;
  b.size = size;
  b.start = events_++;
  live_[id] = blocks_.size();
  blocks_.push_back(b);
}

void PlanRecorder::freed(const void* id) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  blocks_[it->second].end = events_++;
  live_.erase(it);
}

PlannedArena::PlannedArena(char* base, std::vector<PlanBlock> blocks, MemoryPlan plan)
    : base_(base), blocks_(std::move(blocks)), plan_(std::move(plan)) {
  if (plan_.offsets.size() != blocks_.size())
    throw std::invalid_argument("PlannedArena: the plan has " + std::to_string(plan_.offsets.size()) +
                                " offsets for " + std::to_string(blocks_.size()) + " blocks");
}

void PlannedArena::fail(const std::string& why) {
  if (!broken_) why_ = why;
  broken_ = true;
}

void* PlannedArena::take(std::size_t nbytes) {
  if (broken_) return nullptr;
  if (next_ >= blocks_.size()) {
    fail("allocation #" + std::to_string(next_ + 1) + " (" + std::to_string(nbytes) + " bytes): the recorded run made only " +
         std::to_string(blocks_.size()));
    return nullptr;
  }
  const std::size_t i = next_++;
  if (blocks_[i].size != nbytes || blocks_[i].start != events_) {
    fail("allocation #" + std::to_string(i + 1) + " asks for " + std::to_string(nbytes) +
         " bytes; the recorded run asked for " + std::to_string(blocks_[i].size) +
         (blocks_[i].start != events_ ? " at another point" : ""));
    return nullptr;
  }
  ++events_;
  void* p = base_ + plan_.offsets[i];
  live_[p] = i;
  return p;
}

bool PlannedArena::put_back(void* p) {
  auto it = live_.find(p);
  if (it == live_.end()) return false;
  if (!finished_ && !broken_ && blocks_[it->second].end != events_)
    fail("block #" + std::to_string(it->second + 1) + " was freed at another point than in the recorded run");
  ++events_;
  live_.erase(it);
  return true;
}

void PlannedArena::finish() {
  finished_ = true;
  if (!broken_ && next_ != blocks_.size())
    fail("the run made " + std::to_string(next_) + " allocations; the recorded one " + std::to_string(blocks_.size()));
  // A block the recorded run freed but this one keeps would overlap a later block: also a deviation.
  for (const auto& [p, i] : live_)
    if (!broken_ && blocks_[i].end != std::numeric_limits<int64_t>::max())
      fail("block #" + std::to_string(i + 1) + " is still in use; the recorded run freed it");
}

}  // namespace ladnn::cuda
