#include "router/gone_contexts.h"

#include "gtest/gtest.h"

namespace grove {
namespace {

TEST(GoneContextsTest, RemembersWhyUpToItsHistoryOldestForgottenFirst) {
  GoneContexts gone(2);
  gone.Mark(1, "killed");
  gone.Mark(2, "link lost");
  ASSERT_NE(gone.Reason(1), nullptr);
  EXPECT_EQ(*gone.Reason(1), "killed");
  gone.Mark(1, "killed again");  // Keeps its place; the new reason.
  EXPECT_EQ(*gone.Reason(1), "killed again");
  gone.Mark(3, "stopped");
  EXPECT_FALSE(gone.contains(1));
  EXPECT_EQ(gone.Reason(1), nullptr);
  EXPECT_TRUE(gone.contains(2));
  EXPECT_TRUE(gone.contains(3));
  EXPECT_EQ(gone.size(), 2u);
}

TEST(GoneContextsTest, AHistoryOfZeroStillRemembersTheLatest) {
  GoneContexts gone(0);
  gone.Mark(1, "a");
  gone.Mark(2, "b");
  EXPECT_FALSE(gone.contains(1));
  EXPECT_TRUE(gone.contains(2));
}

}  // namespace
}  // namespace grove
