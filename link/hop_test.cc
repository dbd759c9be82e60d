#include "link/hop.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/printable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace grove {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

TEST(IsKnownMethodTest, KnowsEveryMethodAndNothingElse) {
  for (const char* method : {"local", "fork", "ssh", "sudo", "su", "command"}) {
    EXPECT_TRUE(IsKnownMethod(method)) << method;
  }
  for (const char* method : {"", "Local", "localhost", "ssh:", "docker"}) {
    EXPECT_FALSE(IsKnownMethod(method)) << method;
  }
}

TEST(ParseHopTest, MethodAlone) {
  absl::StatusOr<Hop> hop = ParseHop("local");
  ASSERT_TRUE(hop.ok()) << hop.status();
  EXPECT_EQ(hop->method, "local");
  EXPECT_EQ(hop->target, "");
  EXPECT_THAT(hop->options, IsEmpty());
  EXPECT_FALSE(hop->Has("name"));
  EXPECT_EQ(hop->Get("name"), "");
}

TEST(ParseHopTest, NameOption) {
  absl::StatusOr<Hop> hop = ParseHop("local,name=worker1");
  ASSERT_TRUE(hop.ok()) << hop.status();
  EXPECT_EQ(hop->method, "local");
  EXPECT_EQ(hop->target, "");
  EXPECT_THAT(hop->options, ElementsAre(Pair("name", "worker1")));
  EXPECT_TRUE(hop->Has("name"));
  EXPECT_EQ(hop->Get("name"), "worker1");
}

TEST(ParseHopTest, TargetKeepsEverythingAfterTheFirstColon) {
  absl::StatusOr<Hop> hop = ParseHop("ssh:user@host:2222");
  ASSERT_TRUE(hop.ok()) << hop.status();
  EXPECT_EQ(hop->method, "ssh");
  EXPECT_EQ(hop->target, "user@host:2222");
}

TEST(ParseHopTest, OptionValueKeepsItsEqualsSigns) {
  absl::StatusOr<Hop> hop = ParseHop("ssh:web1,ssh_option=A=B,x-y=");
  ASSERT_TRUE(hop.ok()) << hop.status();
  EXPECT_THAT(hop->options, ElementsAre(Pair("ssh_option", "A=B"), Pair("x-y", "")));
}

TEST(ParseHopTest, GetReturnsTheLastValue) {
  absl::StatusOr<Hop> hop = ParseHop("local,name=first,color=red,name=second");
  ASSERT_TRUE(hop.ok()) << hop.status();
  EXPECT_EQ(hop->Get("name"), "second");
  EXPECT_EQ(hop->Get("color"), "red");
  EXPECT_EQ(hop->Get("missing"), "");
  EXPECT_TRUE(hop->Has("color"));
  EXPECT_FALSE(hop->Has("missing"));
  // Every occurrence is kept, in order.
  EXPECT_THAT(hop->options,
              ElementsAre(Pair("name", "first"), Pair("color", "red"), Pair("name", "second")));
}

TEST(ParseHopTest, UnknownMethodIsInvalidArgumentNamingTheHop) {
  absl::StatusOr<Hop> hop = ParseHop("teleport:mars,name=x");
  ASSERT_FALSE(hop.ok());
  EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hop.status().message(), HasSubstr("teleport:mars,name=x"));
  EXPECT_THAT(hop.status().message(), HasSubstr("unknown method 'teleport'"));
}

TEST(ParseHopTest, MethodMustMatchExactly) {
  absl::StatusOr<Hop> hop = ParseHop("localhost");
  ASSERT_FALSE(hop.ok());
  EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hop.status().message(), HasSubstr("localhost"));
}

TEST(ParseHopTest, EmptyNameIsRefused) {
  absl::StatusOr<Hop> hop = ParseHop("local,name=");
  ASSERT_FALSE(hop.ok());
  EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hop.status().message(), HasSubstr("local,name="));
  EXPECT_THAT(hop.status().message(), HasSubstr("name"));
}

TEST(ParseHopTest, NameWithSlashIsRefused) {
  absl::StatusOr<Hop> hop = ParseHop("local,name=a/b");
  ASSERT_FALSE(hop.ok());
  EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hop.status().message(), HasSubstr("'/'"));
}

TEST(ParseHopTest, NameWithControlsIsRefusedAndQuotedAsText) {
  for (const char* text : {"local,name=a\x1b[2Jb", "local,name=a\tb", "local,name=a\nb",
                           "local,name=a\xff"}) {
    absl::StatusOr<Hop> hop = ParseHop(text);
    ASSERT_FALSE(hop.ok()) << Printable(text);
    EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(hop.status().message(), HasSubstr("control characters"));
    EXPECT_EQ(Printable(hop.status().message()), hop.status().message());
  }
  EXPECT_TRUE(ParseHop("local,name=caf\xc3\xa9 1").ok());
  absl::StatusOr<std::vector<Hop>> path = ParsePath("local/local,name=\x1b]0;x\x07");
  ASSERT_FALSE(path.ok());
  EXPECT_EQ(Printable(path.status().message()), path.status().message());
  EXPECT_THAT(path.status().message(), HasSubstr("name=\\x1b]0;x\\x07"));
}

TEST(ParseHopTest, OptionWithoutValueIsRefused) {
  absl::StatusOr<Hop> hop = ParseHop("local,badoption");
  ASSERT_FALSE(hop.ok());
  EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hop.status().message(), HasSubstr("'badoption'"));
  EXPECT_THAT(hop.status().message(), HasSubstr("key=value"));
}

TEST(ParseHopTest, BadKeysAreRefused) {
  for (const char* text : {"local,=value", "local,a b=c", "local,a.b=c", "local,"}) {
    absl::StatusOr<Hop> hop = ParseHop(text);
    ASSERT_FALSE(hop.ok()) << text;
    EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ParseHopTest, EmptyHopAndEmptyTargetAreRefused) {
  absl::StatusOr<Hop> empty = ParseHop("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<Hop> no_target = ParseHop("ssh:");
  ASSERT_FALSE(no_target.ok());
  EXPECT_EQ(no_target.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_target.status().message(), HasSubstr("empty target"));
}

TEST(HopTest, ToStringRoundTrips) {
  for (const char* text : {"local", "local,name=worker1", "sudo:root",
                           "ssh:user@host:2222,identity=/home/me/.ssh/id_ed25519,ssh_option=A=B",
                           "command:docker,name=x,name=y"}) {
    absl::StatusOr<Hop> hop = ParseHop(text);
    ASSERT_TRUE(hop.ok()) << text << ": " << hop.status();
    EXPECT_EQ(hop->ToString(), text);
    absl::StatusOr<Hop> again = ParseHop(hop->ToString());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->method, hop->method);
    EXPECT_EQ(again->target, hop->target);
    EXPECT_EQ(again->options, hop->options);
  }
}

TEST(HopTest, ToStringOfABuiltHop) {
  Hop hop;
  hop.method = "ssh";
  hop.target = "web1";
  hop.options = {{"name", "w"}, {"port", "22"}};
  EXPECT_EQ(hop.ToString(), "ssh:web1,name=w,port=22");
}

TEST(ParsePathTest, OneHop) {
  absl::StatusOr<std::vector<Hop>> path = ParsePath("local,name=worker1");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 1u);
  EXPECT_EQ((*path)[0].method, "local");
  EXPECT_EQ((*path)[0].Get("name"), "worker1");
}

TEST(ParsePathTest, SlashInsideAnOptionValueDoesNotSplitThePath) {
  absl::StatusOr<std::vector<Hop>> path = ParsePath(
      "ssh:user@host:2222,identity=/home/me/.ssh/id_ed25519,ssh_option=A=B/sudo:root");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 2u);
  const Hop& ssh = (*path)[0];
  EXPECT_EQ(ssh.method, "ssh");
  EXPECT_EQ(ssh.target, "user@host:2222");
  EXPECT_THAT(ssh.options, ElementsAre(Pair("identity", "/home/me/.ssh/id_ed25519"),
                                       Pair("ssh_option", "A=B")));
  const Hop& sudo = (*path)[1];
  EXPECT_EQ(sudo.method, "sudo");
  EXPECT_EQ(sudo.target, "root");
  EXPECT_THAT(sudo.options, IsEmpty());
}

TEST(ParsePathTest, ManyHops) {
  absl::StatusOr<std::vector<Hop>> path = ParsePath("local/fork,name=f/ssh:web1/su:bob/command:x");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 5u);
  EXPECT_EQ((*path)[0].method, "local");
  EXPECT_EQ((*path)[1].method, "fork");
  EXPECT_EQ((*path)[1].Get("name"), "f");
  EXPECT_EQ((*path)[2].method, "ssh");
  EXPECT_EQ((*path)[2].target, "web1");
  EXPECT_EQ((*path)[3].method, "su");
  EXPECT_EQ((*path)[3].target, "bob");
  EXPECT_EQ((*path)[4].method, "command");
  EXPECT_EQ((*path)[4].target, "x");
}

TEST(ParsePathTest, SegmentThatOnlyLooksLikeAMethodDoesNotSplit) {
  // "sshkeys" and "sudoers" start with method names but are not followed by ':' or ','.
  absl::StatusOr<std::vector<Hop>> path =
      ParsePath("ssh:web1,identity=/etc/sshkeys/sudoers/k/sudo:root");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 2u);
  EXPECT_EQ((*path)[0].Get("identity"), "/etc/sshkeys/sudoers/k");
  EXPECT_EQ((*path)[1].method, "sudo");
}

TEST(ParsePathTest, EmptyPathIsRefused) {
  absl::StatusOr<std::vector<Hop>> path = ParsePath("");
  ASSERT_FALSE(path.ok());
  EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(path.status().message(), HasSubstr("empty path"));
}

TEST(ParsePathTest, UnknownMethodNamesThePathAndTheHop) {
  absl::StatusOr<std::vector<Hop>> path = ParsePath("bogus:x/sudo:root");
  ASSERT_FALSE(path.ok());
  EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(path.status().message(), HasSubstr("bogus:x/sudo:root"));
  EXPECT_THAT(path.status().message(), HasSubstr("hop 'bogus:x'"));
}

TEST(ParsePathTest, ErrorsInLaterHopsAreReported) {
  for (const char* text : {"local/local,name=", "local/local,badoption", "local/ssh:"}) {
    absl::StatusOr<std::vector<Hop>> path = ParsePath(text);
    ASSERT_FALSE(path.ok()) << text;
    EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(path.status().message(), HasSubstr(text));
  }
}

// A directory named like a method inside a value ("/usr/local/etc") stays in it: a method
// alone followed by more path cannot be a hop.
TEST(ParsePathTest, DirectoryNamedLikeAMethodInsideAValueDoesNotSplit) {
  absl::StatusOr<std::vector<Hop>> path =
      ParsePath("ssh:web1,identity=/usr/local/etc/key/sudo:root");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 2u);
  EXPECT_EQ((*path)[0].Get("identity"), "/usr/local/etc/key");
  EXPECT_EQ((*path)[1].method, "sudo");
}

// What cannot be told apart (a value ending in "/local" before the next hop, a ',' in a
// value) is written with escapes: %2F, %2C, %25.
TEST(ParsePathTest, EscapesInValuesKeepSlashesCommasAndPercents) {
  absl::StatusOr<std::vector<Hop>> path =
      ParsePath("ssh:web1,password=abc%2Flocal%2Cx%25y%41/sudo:root");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 2u);
  EXPECT_EQ((*path)[0].Get("password"), "abc/local,x%y%41");
  EXPECT_EQ((*path)[1].method, "sudo");
  // Without the escape the same text is two hops: the rule the escape exists for.
  absl::StatusOr<std::vector<Hop>> split = ParsePath("ssh:web1,password=abc/local");
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(split->size(), 2u);
  // ToString writes what needs it escaped, and reads back the same.
  Hop hop;
  hop.method = "ssh";
  hop.target = "web1";
  hop.options = {{"identity", "/usr/local/key"}, {"password", "a,b/local%2F"}, {"x", "y/local"}};
  const std::string text = hop.ToString();
  EXPECT_EQ(text, "ssh:web1,identity=/usr/local/key,password=a%2Cb/local%252F,x=y%2Flocal");
  absl::StatusOr<std::vector<Hop>> again = ParsePath(text + "/sudo:root");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), 2u);
  EXPECT_EQ((*again)[0].options, hop.options);
  EXPECT_THAT(hop.DebugString(), Not(HasSubstr("a%2Cb")));
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
