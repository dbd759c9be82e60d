#include "router/id_blocks.h"

#include <cstdint>
#include <limits>

#include "gtest/gtest.h"

namespace grove {
namespace {

TEST(IdBlocksTest, TheMasterCountsAndOthersTakeFromTheirBlock) {
  IdBlocks master(16);
  EXPECT_EQ(master.NextLocal(true), 1u);
  EXPECT_EQ(master.GrantFromCounter(1000), 2u);
  EXPECT_EQ(master.NextLocal(true), 1002u);
  EXPECT_TRUE(master.HandedOut(1002));
  EXPECT_FALSE(master.HandedOut(1003));

  IdBlocks child(16);
  EXPECT_EQ(child.NextLocal(false), std::nullopt);  // It must ask for a block.
  child.SetLocalBlock(2, 2);
  EXPECT_EQ(child.NextLocal(false), 2u);
  EXPECT_EQ(child.NextLocal(false), 3u);
  EXPECT_EQ(child.NextLocal(false), std::nullopt);
}

TEST(IdBlocksTest, AnIdIsTakenOnceAndOnlyFromItsParentsBlock) {
  IdBlocks blocks(16);
  ASSERT_TRUE(blocks.Record(/*owner=*/7, /*first=*/100, /*count=*/10));
  EXPECT_TRUE(blocks.Covers(100, 7));
  EXPECT_TRUE(blocks.Covers(109, 7));
  EXPECT_FALSE(blocks.Covers(110, 7));
  EXPECT_FALSE(blocks.Covers(99, 7));
  EXPECT_FALSE(blocks.Covers(105, 8));  // Another parent's claim.
  EXPECT_FALSE(blocks.Take(105, 8));
  EXPECT_TRUE(blocks.Take(105, 7));
  EXPECT_FALSE(blocks.Take(105, 7));  // Used before.
  // Ranges merge where they touch, and still refuse each id taken.
  EXPECT_TRUE(blocks.Take(104, 7));
  EXPECT_TRUE(blocks.Take(106, 7));
  for (uint64_t id : {104, 105, 106}) EXPECT_FALSE(blocks.Take(id, 7)) << id;
  EXPECT_TRUE(blocks.Take(103, 7));
}

TEST(IdBlocksTest, AnOwnerKeepsItsLatestBlocksAndLosesThemWhenGone) {
  IdBlocks blocks(2);
  ASSERT_TRUE(blocks.Record(7, 100, 10));
  ASSERT_TRUE(blocks.Record(7, 200, 10));
  ASSERT_TRUE(blocks.Record(7, 300, 10));  // Drops the block at 100.
  EXPECT_FALSE(blocks.Covers(100, 7));
  EXPECT_TRUE(blocks.Covers(200, 7));
  EXPECT_TRUE(blocks.Covers(300, 7));
  ASSERT_TRUE(blocks.Record(8, 400, 10));
  blocks.DropOwner(7);
  EXPECT_FALSE(blocks.Covers(200, 7));
  EXPECT_TRUE(blocks.Covers(400, 8));
  EXPECT_EQ(blocks.blocks(), 1u);
}

TEST(IdBlocksTest, EmptyAndOverflowingBlocksAreNotRecorded) {
  IdBlocks blocks(16);
  EXPECT_FALSE(blocks.Record(7, 100, 0));
  EXPECT_FALSE(blocks.Record(7, std::numeric_limits<uint64_t>::max() - 1, 5));
  EXPECT_EQ(blocks.blocks(), 0u);
}

}  // namespace
}  // namespace grove
