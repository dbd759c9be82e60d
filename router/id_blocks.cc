#include "router/id_blocks.h"

#include <iterator>
#include <limits>

namespace grove {

std::optional<uint64_t> IdBlocks::NextLocal(bool master) {
  if (master || next_id_ < local_end_) return next_id_++;
  return std::nullopt;
}

void IdBlocks::SetLocalBlock(uint64_t first, uint64_t count) {
  next_id_ = first;
  local_end_ = first + count;
}

uint64_t IdBlocks::GrantFromCounter(uint64_t count) {
  const uint64_t first = next_id_;
  next_id_ += count;
  return first;
}

bool IdBlocks::Record(uint64_t owner, uint64_t first, uint64_t count) {
  if (count == 0 || first > std::numeric_limits<uint64_t>::max() - count) return false;
  blocks_[first] = Block{first + count, owner, {}};
  std::vector<uint64_t>& owned = by_owner_[owner];
  owned.push_back(first);
  if (owned.size() > max_per_owner_) {
    blocks_.erase(owned.front());
    owned.erase(owned.begin());
  }
  return true;
}

IdBlocks::Block* IdBlocks::Find(uint64_t id, uint64_t parent) {
  auto b = blocks_.upper_bound(id);
  if (b == blocks_.begin()) return nullptr;
  --b;
  return id < b->second.end && b->second.owner == parent ? &b->second : nullptr;
}

bool IdBlocks::Covers(uint64_t id, uint64_t parent) const {
  return const_cast<IdBlocks*>(this)->Find(id, parent) != nullptr;
}

bool IdBlocks::Take(uint64_t id, uint64_t parent) {
  Block* block = Find(id, parent);
  if (block == nullptr) return false;
  absl::btree_map<uint64_t, uint64_t>& taken = block->taken;
  auto next = taken.upper_bound(id);
  auto prev = next == taken.begin() ? taken.end() : std::prev(next);
  if (prev != taken.end() && id < prev->second) return false;
  // The range that `id` joins or starts; a btree's iterators do not survive a change.
  const uint64_t first = prev != taken.end() && prev->second == id ? prev->first : id;
  uint64_t end = id + 1;
  if (next != taken.end() && next->first == end) {
    end = next->second;
    taken.erase(next);
  }
  taken[first] = end;
  return true;
}

void IdBlocks::DropOwner(uint64_t owner) {
  auto owned = by_owner_.find(owner);
  if (owned == by_owner_.end()) return;
  for (uint64_t first : owned->second) blocks_.erase(first);
  by_owner_.erase(owned);
}

}  // namespace grove
