// gMock matchers for absl::Status and absl::StatusOr, for every test of grove:
//
//   EXPECT_THAT(status, IsOk());
//   EXPECT_THAT(status_or, StatusIs(absl::StatusCode::kNotFound));
//   EXPECT_THAT(status, StatusIs(absl::StatusCode::kNotFound, HasSubstr("no context")));
#ifndef GROVE_COMMON_TESTING_STATUS_MATCHERS_H_
#define GROVE_COMMON_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace grove::testing {

inline const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = ::grove::testing::StatusOf(arg);
  if (!status.ok()) *result_listener << "status is " << status;
  return status.ok();
}

// Matches a Status or StatusOr with code `code` and a message matching `message`.
class StatusIsMatcher {
 public:
  StatusIsMatcher(absl::StatusCode code, ::testing::Matcher<const std::string&> message)
      : code_(code), message_(std::move(message)) {}

  template <typename T>
  bool MatchAndExplain(const T& arg, ::testing::MatchResultListener* listener) const {
    const absl::Status& status = StatusOf(arg);
    *listener << "status is " << status;
    return status.code() == code_ && message_.Matches(std::string(status.message()));
  }
  void DescribeTo(std::ostream* os) const {
    *os << "has code " << absl::StatusCodeToString(code_) << " and a message that ";
    message_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "does not have code " << absl::StatusCodeToString(code_)
        << " or has a message that ";
    message_.DescribeNegationTo(os);
  }

 private:
  const absl::StatusCode code_;
  const ::testing::Matcher<const std::string&> message_;
};

template <typename M>
::testing::PolymorphicMatcher<StatusIsMatcher> StatusIs(absl::StatusCode code, M message) {
  return ::testing::MakePolymorphicMatcher(
      StatusIsMatcher(code, ::testing::SafeMatcherCast<const std::string&>(message)));
}
inline ::testing::PolymorphicMatcher<StatusIsMatcher> StatusIs(absl::StatusCode code) {
  return StatusIs(code, ::testing::_);
}

}  // namespace grove::testing

#endif  // GROVE_COMMON_TESTING_STATUS_MATCHERS_H_
