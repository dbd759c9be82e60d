#include "router/log_quota.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace grove {
namespace {

TEST(LogQuotaTest, ABurstOfOneSecondPassesThenTheRateHolds) {
  LogQuota quota;
  const absl::Time start = absl::Now();
  int passed = 0;
  for (int i = 0; i < 3 * kLogRecordsPerSecond; ++i) passed += quota.Take(start, 10) ? 1 : 0;
  EXPECT_EQ(passed, static_cast<int>(kLogRecordsPerSecond));
  // Half a second later, half a second's worth more.
  passed = 0;
  for (int i = 0; i < kLogRecordsPerSecond; ++i) {
    passed += quota.Take(start + absl::Milliseconds(500), 10) ? 1 : 0;
  }
  EXPECT_NEAR(passed, kLogRecordsPerSecond / 2, 2);
}

TEST(LogQuotaTest, BytesAreLimitedToo) {
  LogQuota quota;
  const absl::Time start = absl::Now();
  EXPECT_TRUE(quota.Take(start, static_cast<size_t>(kLogBytesPerSecond) - 1));
  EXPECT_FALSE(quota.Take(start, 2));
}

TEST(LogQuotaTest, DropsAreReportedAtMostOnceASecond) {
  LogQuota quota;
  const absl::Time start = absl::Now();
  EXPECT_EQ(quota.TakeDropped(start), 0);  // Nothing dropped.
  for (int i = 0; i < kLogRecordsPerSecond + 5; ++i) quota.Take(start, 1);
  EXPECT_EQ(quota.TakeDropped(start), 5);
  for (int i = 0; i < 3; ++i) quota.Take(start, 1);
  EXPECT_EQ(quota.TakeDropped(start + absl::Milliseconds(500)), 0);  // Too soon.
  EXPECT_EQ(quota.TakeDropped(start + absl::Milliseconds(1500)), 3);
}

}  // namespace
}  // namespace grove
