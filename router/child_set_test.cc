#include "router/child_set.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/testing/fake_link.h"

namespace grove {
namespace {

using ::grove::testing::IsOk;
using ::grove::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;
using Child = ChildSet::Child;

std::shared_ptr<Child> NewChild(uint64_t id, const std::string& name) {
  auto child = std::make_shared<Child>();
  child->info.set_id(id);
  child->info.set_name(name);
  child->link = std::make_shared<FakeLink>(name, [](FakeLink*, v1::Envelope) {});
  return child;
}

TEST(ChildSetTest, AChildIsFoundByItsLinkAndItsIdAndRoutesItsOwnId) {
  ChildSet children(100);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  std::shared_ptr<Child> c2 = NewChild(3, "c2");
  ASSERT_THAT(children.Add(c1), IsOk());
  ASSERT_THAT(children.Add(c2), IsOk());

  EXPECT_EQ(children.FindByLink(c1->link.get()), c1);
  EXPECT_EQ(children.FindById(3), c2);
  EXPECT_EQ(children.RouteOf(5), c1.get());
  EXPECT_THAT(c1->routed(), UnorderedElementsAre(5));
  EXPECT_THAT(children.Ids(), ElementsAre(3, 5));
  EXPECT_THAT(children.List(), UnorderedElementsAre(c1, c2));
  EXPECT_THAT(children.Links(), UnorderedElementsAre(c1->link, c2->link));
  EXPECT_EQ(children.size(), 2u);
  EXPECT_EQ(children.live_links(), 2);
  EXPECT_EQ(children.FindById(4), nullptr);
  EXPECT_EQ(children.RouteOf(4), nullptr);
}

TEST(ChildSetTest, AKnownLinkOrIdIsNotAddedAgain) {
  ChildSet children(100);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  ASSERT_THAT(children.Add(c1), IsOk());

  std::shared_ptr<Child> same_link = NewChild(6, "same-link");
  same_link->link = c1->link;
  EXPECT_THAT(children.Add(same_link), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(children.Add(NewChild(5, "same-id")), StatusIs(absl::StatusCode::kAlreadyExists));

  EXPECT_EQ(children.size(), 1u);
  EXPECT_EQ(children.live_links(), 1);
  EXPECT_EQ(children.RouteOf(5), c1.get());
  EXPECT_FALSE(children.Reaches(6));
}

TEST(ChildSetTest, RoutesOfASubtreeGoWithIt) {
  ChildSet children(100);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  std::shared_ptr<Child> c2 = NewChild(8, "c2");
  ASSERT_THAT(children.Add(c1), IsOk());
  ASSERT_THAT(children.Add(c2), IsOk());
  ASSERT_THAT(children.AddRoute(c1, 6), IsOk());
  ASSERT_THAT(children.AddRoute(c1, 7), IsOk());
  ASSERT_THAT(children.AddRoute(c2, 9), IsOk());
  EXPECT_THAT(children.AddRoute(c2, 6), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(children.RouteOf(6), c1.get());
  EXPECT_THAT(c1->routed(), UnorderedElementsAre(5, 6, 7));

  // Only the routes to c1 go: 9 is c2's.
  children.RemoveRoutes(*c1, {6, 7, 9});
  EXPECT_FALSE(children.Reaches(6));
  EXPECT_FALSE(children.Reaches(7));
  EXPECT_EQ(children.RouteOf(9), c2.get());
  EXPECT_THAT(c1->routed(), UnorderedElementsAre(5));
  EXPECT_THAT(c2->routed(), UnorderedElementsAre(8, 9));
}

TEST(ChildSetTest, ALinkCarriesAtMostTheLimit) {
  ChildSet children(3);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  std::shared_ptr<Child> c2 = NewChild(8, "c2");
  ASSERT_THAT(children.Add(c1), IsOk());
  ASSERT_THAT(children.Add(c2), IsOk());
  ASSERT_THAT(children.AddRoute(c1, 6), IsOk());
  EXPECT_FALSE(children.Full(*c1));
  ASSERT_THAT(children.AddRoute(c1, 7), IsOk());
  EXPECT_TRUE(children.Full(*c1));
  EXPECT_THAT(children.AddRoute(c1, 10),
              StatusIs(absl::StatusCode::kResourceExhausted, ::testing::HasSubstr("c1")));
  EXPECT_FALSE(children.Reaches(10));
  EXPECT_THAT(children.AddRoute(c2, 10), IsOk());  // The limit is per link.

  children.RemoveRoutes(*c1, {7});
  EXPECT_FALSE(children.Full(*c1));
  EXPECT_THAT(children.AddRoute(c1, 11), IsOk());
}

// A link going down takes the child out of the children at once; its routes go with its
// subtree, and its link counts as live until its going down is handled.
TEST(ChildSetTest, AChildTakenByItsLinkKeepsItsRoutesAndLiveLinkUntilToldOtherwise) {
  ChildSet children(100);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  ASSERT_THAT(children.Add(c1), IsOk());
  ASSERT_THAT(children.AddRoute(c1, 6), IsOk());

  EXPECT_EQ(children.TakeByLink(c1->link.get()), c1);
  EXPECT_EQ(children.TakeByLink(c1->link.get()), nullptr);
  EXPECT_EQ(children.FindByLink(c1->link.get()), nullptr);
  EXPECT_EQ(children.FindById(5), nullptr);
  EXPECT_TRUE(children.empty());
  EXPECT_THAT(children.Ids(), IsEmpty());
  EXPECT_EQ(children.RouteOf(6), c1.get());
  EXPECT_EQ(children.live_links(), 1);

  children.RemoveRoutes(*c1, {5, 6});
  EXPECT_FALSE(children.Reaches(5));
  EXPECT_FALSE(children.Reaches(6));
  children.LinkDownHandled();
  EXPECT_EQ(children.live_links(), 0);
}

TEST(ChildSetTest, ARefusedIdLosesItsRouteUnlessItIsAChild) {
  ChildSet children(100);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  std::shared_ptr<Child> c2 = NewChild(8, "c2");
  ASSERT_THAT(children.Add(c1), IsOk());
  ASSERT_THAT(children.Add(c2), IsOk());
  ASSERT_THAT(children.AddRoute(c1, 6), IsOk());
  ASSERT_THAT(children.AddRoute(c2, 9), IsOk());

  EXPECT_THAT(children.RemoveDescendantRoutes({9, 5, 42, 6}),
              ElementsAre(Pair(9, c2), Pair(6, c1)));
  EXPECT_TRUE(children.Reaches(5));
  EXPECT_FALSE(children.Reaches(6));
  EXPECT_FALSE(children.Reaches(9));
  EXPECT_THAT(c1->routed(), UnorderedElementsAre(5));
  EXPECT_THAT(c2->routed(), UnorderedElementsAre(8));
}

TEST(ChildSetTest, ANameIsSpawnedOnceAtATime) {
  ChildSet children(100);
  ASSERT_THAT(children.ReserveName("web"), IsOk());
  EXPECT_THAT(children.ReserveName("web"), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(children.ReserveName("db"), IsOk());
  children.ReleaseName("web");
  EXPECT_THAT(children.ReserveName("web"), IsOk());
}

TEST(ChildSetTest, TheCallersOfALostContextAreToldOnce) {
  ChildSet children(100);
  std::shared_ptr<Child> c1 = NewChild(5, "c1");
  std::shared_ptr<Child> c2 = NewChild(8, "c2");
  std::shared_ptr<Child> c3 = NewChild(11, "c3");
  ASSERT_THAT(children.Add(c1), IsOk());
  ASSERT_THAT(children.Add(c2), IsOk());
  ASSERT_THAT(children.Add(c3), IsOk());
  ASSERT_THAT(children.AddRoute(c1, 6), IsOk());

  children.NoteCallOut(*c1, 9);
  children.NoteCallOut(*c1, 6);  // Inside its own subtree: not a call out.
  children.NoteCallOut(*c2, 9);
  children.NoteCallOut(*c3, 12);

  // 9 was lost behind c2's link: c2 is not told again.
  EXPECT_THAT(children.TakeCallersOf({9}, c2.get()), ElementsAre(c1->link));
  EXPECT_THAT(children.TakeCallersOf({9}, c2.get()), IsEmpty());
  EXPECT_THAT(children.TakeCallersOf({9}, nullptr), ElementsAre(c2->link));
  EXPECT_THAT(children.TakeCallersOf({6}, nullptr), IsEmpty());
  EXPECT_THAT(children.TakeCallersOf({12, 13}, nullptr), ElementsAre(c3->link));
}

}  // namespace
}  // namespace grove
