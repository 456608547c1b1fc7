// cuda/block_cache.cpp — cuda/block_cache.h. Pure host code, compiled in every build (its tests run
// without a GPU). Counters move only in insert_free/erase_free (cached) and take/add_segment/put_back
// (allocated), so reserved = allocated + cached holds after every call.
#include "cuda/block_cache.h"

#include <algorithm>
#include <functional>

namespace ladnn::cuda {

bool BlockCache::Order::operator()(const Block* a, const Block* b) const {
  if (a->small != b->small) return a->small < b->small;
  if (a->pool != b->pool) return a->pool < b->pool;
  if (a->stream != b->stream) return std::less<Stream>()(a->stream, b->stream);
  if (a->size != b->size) return a->size < b->size;
  // Among equal sizes the most recently freed first: likeliest still in L2, and what the exact-class
  // cache always did.
  return a->freed_seq > b->freed_seq;
}

BlockCache::~BlockCache() {
  for (auto& [p, b] : blocks_) delete b;
}

void BlockCache::insert_free(Block* b) {
  b->freed_seq = ++seq_;
  free_.insert(b);
  cached_ += b->size;
  if (b->pool) pool_cached_ += b->size;
}

void BlockCache::erase_free(Block* b) {
  free_.erase(b);
  cached_ -= b->size;
  if (b->pool) pool_cached_ -= b->size;
}

BlockCache::Block* BlockCache::split(Block* b, std::size_t size) {
  Block* rest = new Block(*b);
  rest->ptr = b->ptr + size;
  rest->size = b->size - size;
  rest->requested = 0;
  rest->in_use = false;
  rest->prev = b;
  rest->next = b->next;
  if (b->next) b->next->prev = rest;
  b->next = rest;
  b->size = size;
  blocks_[rest->ptr] = rest;
  insert_free(rest);
  return rest;
}

void BlockCache::absorb_next(Block* b) {
  Block* n = b->next;
  b->size += n->size;
  b->next = n->next;
  if (n->next) n->next->prev = b;
  blocks_.erase(n->ptr);
  delete n;
}

void* BlockCache::take(std::size_t size, std::size_t requested, Stream stream, uint64_t pool) {
  Block probe;
  probe.small = size <= kSmallLimit;
  probe.pool = pool;
  probe.stream = stream;
  probe.size = size;
  probe.freed_seq = ~uint64_t{0};  // before every real block of this size
  auto it = free_.lower_bound(&probe);
  if (it == free_.end()) return nullptr;
  Block* b = *it;
  if (b->small != probe.small || b->pool != pool || b->stream != stream) return nullptr;
  if (!splits(b->small) && b->size != size) return nullptr;  // e.g. small blocks: exactly their class
  erase_free(b);
  if (b->size > size) split(b, size);
  b->in_use = true;
  b->requested = requested;
  allocated_ += size;
  return b->ptr;
}

void* BlockCache::add_segment(void* base, std::size_t segment_size, std::size_t size, std::size_t requested,
                              Stream stream, uint64_t pool) {
  Block* b = new Block();
  b->ptr = static_cast<char*>(base);
  b->size = segment_size;
  b->stream = stream;
  b->pool = pool;
  b->small = size <= kSmallLimit;
  blocks_[b->ptr] = b;
  ++segments_;
  if (segment_size > size && splits(b->small)) split(b, size);
  b->in_use = true;
  b->requested = requested;
  allocated_ += b->size;
  return base;
}

BlockCache::Freed BlockCache::put_back(void* p) {
  Freed out;
  auto it = blocks_.find(p);
  if (it == blocks_.end()) return out;
  Block* b = it->second;
  if (!b->in_use) {
    out.double_free = true;
    return out;
  }
  out.size = b->size;
  out.requested = b->requested;
  b->in_use = false;
  b->requested = 0;
  allocated_ -= b->size;
  // Merge with free neighbours (only large segments have any). They share b's stream and pool: a
  // segment is made for one stream inside one pool, and release_pool retags all of a pool's blocks.
  if (b->prev && !b->prev->in_use) {
    erase_free(b->prev);
    b = b->prev;
    absorb_next(b);
  }
  if (b->next && !b->next->in_use) {
    erase_free(b->next);
    absorb_next(b);
  }
  insert_free(b);
  return out;
}

std::vector<std::pair<void*, std::size_t>> BlockCache::drop_free_segments() {
  std::vector<std::pair<void*, std::size_t>> out;
  for (auto it = free_.begin(); it != free_.end();) {
    Block* b = *it;
    if (b->prev || b->next || b->pool) {  // part of a segment still in use, or a graph's
      ++it;
      continue;
    }
    it = free_.erase(it);
    cached_ -= b->size;
    out.emplace_back(b->ptr, b->size);
    blocks_.erase(b->ptr);
    delete b;
    --segments_;
  }
  return out;
}

void BlockCache::release_pool(uint64_t pool) {
  if (pool == 0) return;
  for (auto& [p, b] : blocks_) {
    if (b->pool != pool) continue;
    if (b->in_use) {
      b->pool = 0;
    } else {
      erase_free(b);
      b->pool = 0;
      insert_free(b);
    }
  }
}

std::vector<std::pair<void*, std::size_t>> BlockCache::free_blocks() const {
  std::vector<std::pair<void*, std::size_t>> out;
  for (const Block* b : free_) out.emplace_back(b->ptr, b->size);
  std::sort(out.begin(), out.end(),
            [](const auto& x, const auto& y) { return std::less<void*>()(x.first, y.first); });
  return out;
}

}  // namespace ladnn::cuda
