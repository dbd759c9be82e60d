// Context ids: who may take which. The master hands out ids in blocks (grove.id_block); every
// context on the way to a block's owner records it (IdBlockGranted), so that each can check a
// ContextAdded against the blocks of the claimed parent itself.
//
//   master:  GrantFromCounter(count) ─> first id ─ Record(owner, first, count) ─┐
//   on the way to owner:                          Record(owner, first, count)   │ IdBlockGranted
//   owner:   SetLocalBlock(first, count); NextLocal() ...                       ┘
//   anywhere: Covers(id, parent), then Take(id, parent) for a ContextAdded
//
// Thread-compatible: the router's lock guards it.
#ifndef GROVE_ROUTER_ID_BLOCKS_H_
#define GROVE_ROUTER_ID_BLOCKS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"

namespace grove {

class IdBlocks {
 public:
  // `max_per_owner`: the blocks one owner holds at most; a new block beyond drops its oldest
  // (an owner takes ids from its latest block only).
  explicit IdBlocks(size_t max_per_owner) : max_per_owner_(max_per_owner) {}

  // ---- This context's own ids ----
  // The next id of this context's own: the master's counter (`master`), or the block set
  // by SetLocalBlock while it lasts; nullopt when a block must be asked for.
  std::optional<uint64_t> NextLocal(bool master);
  // The block the master gave this context.
  void SetLocalBlock(uint64_t first, uint64_t count);
  // In the master: the first of `count` new ids, taken from the counter.
  uint64_t GrantFromCounter(uint64_t count);
  // In the master: whether `id` was ever handed out.
  bool HandedOut(uint64_t id) const { return id < next_id_; }

  // ---- Blocks of the contexts below ----
  // Records the block [first, first + count) handed to `owner`. False (nothing recorded)
  // when the block is empty or overflows.
  bool Record(uint64_t owner, uint64_t first, uint64_t count);
  // Whether `id` lies in a block handed to `parent`.
  bool Covers(uint64_t id, uint64_t parent) const;
  // Marks `id`, in a block of `parent`, taken; false when it is in none or was taken before.
  bool Take(uint64_t id, uint64_t parent);
  // Forgets the blocks of `owner` (gone: nothing can be added under it any more).
  void DropOwner(uint64_t owner);
  size_t blocks() const { return blocks_.size(); }

 private:
  struct Block {
    uint64_t end = 0;
    uint64_t owner = 0;
    // The ids taken from it: {first: end}, merged where they touch.
    absl::btree_map<uint64_t, uint64_t> taken;
  };
  Block* Find(uint64_t id, uint64_t parent);

  const size_t max_per_owner_;
  uint64_t next_id_ = 1;
  uint64_t local_end_ = 0;
  // By first id: in the master, every block handed out; elsewhere, those told on the way down.
  absl::btree_map<uint64_t, Block> blocks_;
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> by_owner_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_ID_BLOCKS_H_
