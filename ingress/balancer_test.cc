// The balancer on its own: which replica each call goes to, and the errors when none can
// take it. No processes: replicas are located and their health set by the test.
#include "ingress/balancer.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace grove {
namespace {

using ::grove::testing::IsOk;
using ::grove::testing::StatusIs;
using ::testing::HasSubstr;

using Metadata = std::multimap<grpc::string_ref, grpc::string_ref>;
constexpr char kSay[] = "/grove.examples.Echo/Say";

v1::Spec Spec(const std::string& text) {
  v1::Spec spec;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &spec));
  return spec;
}

// Two replicas of grove.examples.Echo, running as contexts 1 (a) and 2 (b), both SERVING.
class BalancerTest : public ::testing::Test {
 protected:
  BalancerTest() {
    balancer_.SetServices(Spec(R"(
      service {
        name: "grove.examples.Echo"
        replica { path: "local,name=a" }
        replica { path: "local,name=b" }
        max_calls_per_replica: 2
      })").service());
    balancer_.Locate({Running("local,name=a", 1, "a"), Running("local,name=b", 2, "b")});
    balancer_.SetHealth("local,name=a", ContextId(1), "SERVING");
    balancer_.SetHealth("local,name=b", ContextId(2), "SERVING");
  }

  static ReplicaLocation Running(const std::string& path, uint64_t id, const std::string& name) {
    return {path, ContextId(id), name, "running", ""};
  }

  absl::StatusOr<ContextId> Pick(const Metadata& metadata = {}) {
    absl::StatusOr<CallPicker::Picked> picked = balancer_.Pick(kSay, metadata);
    if (!picked.ok()) return picked.status();
    EXPECT_EQ(picked->retriable, metadata.empty()) << "a pinned call stays where it was pinned";
    return picked->target;
  }

  Balancer balancer_;
};

TEST_F(BalancerTest, CallsGoToTheLeastLoadedReplicaAndTiesTakeTurns) {
  absl::StatusOr<ContextId> first = Pick();
  ASSERT_THAT(first, IsOk());
  absl::StatusOr<ContextId> second = Pick();
  ASSERT_THAT(second, IsOk());
  EXPECT_NE(*first, *second);  // The other has fewer in flight.
  balancer_.Done(*first, grpc::Status::OK);
  EXPECT_EQ(*Pick(), *first);  // Now it has fewer.
  balancer_.Done(*first, grpc::Status::OK);
  balancer_.Done(*second, grpc::Status::OK);
  // Idle: in turn.
  std::vector<uint64_t> turns;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<ContextId> id = Pick();
    ASSERT_THAT(id, IsOk());
    turns.push_back(id->value());
    balancer_.Done(*id, grpc::Status::OK);
  }
  EXPECT_NE(turns[0], turns[1]);
  EXPECT_EQ(turns[0], turns[2]);
}

TEST_F(BalancerTest, AServiceNobodyServesIsUnimplementedNamingIt) {
  EXPECT_THAT(balancer_.Pick("/other.Service/Method", {}),
              StatusIs(absl::StatusCode::kUnimplemented,
                       ::testing::AllOf(HasSubstr("other.Service"), HasSubstr("grove.examples.Echo"))));
  EXPECT_THAT(balancer_.Pick("nonsense", {}), StatusIs(absl::StatusCode::kUnimplemented));
}

TEST_F(BalancerTest, ALostReplicaLeavesAtOnceAndComesBackOnlyWhenServing) {
  balancer_.Lost(ContextId(1), "killed by signal 9");
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<ContextId> id = Pick();
    ASSERT_THAT(id, IsOk());
    EXPECT_EQ(id->value(), 2u);
    balancer_.Done(*id, grpc::Status::OK);
  }
  // Restarted as context 3: out of the rotation until a check says SERVING.
  balancer_.Locate({Running("local,name=a", 3, "a"), Running("local,name=b", 2, "b")});
  EXPECT_EQ(Pick()->value(), 2u);
  balancer_.Done(ContextId(2), grpc::Status::OK);
  balancer_.SetHealth("local,name=a", ContextId(3), "SERVING");
  std::set<uint64_t> seen;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<ContextId> id = Pick();
    seen.insert(id->value());
    balancer_.Done(*id, grpc::Status::OK);
  }
  EXPECT_EQ(seen, (std::set<uint64_t>{2, 3}));
  // A late loss of the old context changes nothing.
  balancer_.Lost(ContextId(1), "late");
  EXPECT_THAT(balancer_.Describe()[0].replicas(0).health(), "SERVING");
}

TEST_F(BalancerTest, NoHealthyReplicaIsUnavailableListingEveryReplica) {
  balancer_.SetHealth("local,name=a", ContextId(1), "NOT_SERVING");
  balancer_.Lost(ContextId(2), "its host went away");
  EXPECT_THAT(Pick(), StatusIs(absl::StatusCode::kUnavailable,
                               ::testing::AllOf(HasSubstr("a (context 1): NOT_SERVING"),
                                                HasSubstr("b (context 2): lost"),
                                                HasSubstr("its host went away"))));
  EXPECT_EQ(balancer_.Serving(),
            (std::vector<std::pair<std::string, bool>>{{"grove.examples.Echo", false}}));
}

TEST_F(BalancerTest, CallsInFlightPerReplicaAreBounded) {
  std::vector<ContextId> taken;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<ContextId> id = Pick();
    ASSERT_THAT(id, IsOk());
    taken.push_back(*id);
  }
  EXPECT_THAT(Pick(), StatusIs(absl::StatusCode::kResourceExhausted,
                               HasSubstr("max_calls_per_replica")));
  balancer_.Done(taken[0], grpc::Status(grpc::StatusCode::INTERNAL, "failed"));
  EXPECT_THAT(Pick(), IsOk());
  const v1::ServiceStatus status = balancer_.Describe()[0];
  EXPECT_EQ(status.replicas(0).in_flight() + status.replicas(1).in_flight(), 4);
  EXPECT_EQ(status.replicas(0).failed() + status.replicas(1).failed(), 1);
}

TEST_F(BalancerTest, AClientPinsAReplicaByNameOrId) {
  Metadata by_name{{kReplicaKey, "b"}};
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Pick(by_name)->value(), 2u);
    balancer_.Done(ContextId(2), grpc::Status::OK);
  }
  Metadata by_id{{kReplicaKey, "1"}};
  EXPECT_EQ(Pick(by_id)->value(), 1u);
  EXPECT_EQ(Pick(by_id)->value(), 1u);
  // A pinned replica has the same bound as any other.
  EXPECT_THAT(Pick(by_id), StatusIs(absl::StatusCode::kResourceExhausted,
                                    HasSubstr("max_calls_per_replica")));
  EXPECT_THAT(Pick({{kReplicaKey, "nobody"}}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("'nobody'")));
  balancer_.Lost(ContextId(2), "gone");
  EXPECT_THAT(Pick(by_name), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("pinned")));
}

TEST_F(BalancerTest, ARetryGoesToAnotherReplicaOrNowhere) {
  absl::StatusOr<ContextId> first = Pick();
  ASSERT_THAT(first, IsOk());
  balancer_.Done(*first, grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost"));
  std::optional<ContextId> again =
      balancer_.Retry(kSay, *first, absl::UnavailableError("lost"));
  ASSERT_TRUE(again.has_value());
  EXPECT_NE(*again, *first);
  balancer_.Done(*again, grpc::Status::OK);
  balancer_.Lost(*again, "gone too");
  EXPECT_FALSE(balancer_.Retry(kSay, *first, absl::UnavailableError("lost")).has_value());
}

TEST_F(BalancerTest, ServerReflectionGoesToAnyReplica) {
  EXPECT_THAT(balancer_.Pick("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", {}),
              IsOk());
}

TEST_F(BalancerTest, ServicesReplacedByAReloadKeepTheReplicasThatStay) {
  absl::StatusOr<ContextId> id = Pick();
  ASSERT_THAT(id, IsOk());
  balancer_.SetServices(Spec(R"(
    service {
      name: "grove.examples.Echo"
      replica { path: "local,name=a" }
      replica { path: "local,name=c" }
    })").service());
  const v1::ServiceStatus status = balancer_.Describe()[0];
  ASSERT_EQ(status.replicas_size(), 2);
  EXPECT_EQ(status.replicas(0).health(), "SERVING");  // a: kept, with its health.
  EXPECT_EQ(status.replicas(1).health(), "starting");  // c: new.
  balancer_.Done(*id, grpc::Status::OK);  // A call on a dropped replica ends quietly.
}

}  // namespace
}  // namespace grove
