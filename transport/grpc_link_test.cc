// Links over a real socketpair, both ends in this process: envelopes in order both ways,
// batching, bad input (an oversized message, garbage bytes) dropping only that link, and a
// receiving end that does not answer each envelope with a WINDOW_UPDATE of its own, and a
// link thread that sleeps once its links go quiet.
#include "transport/grpc_link.h"

#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "glog/logging.h"
#include "grpcpp/server_posix.h"
#include "gtest/gtest.h"

namespace grove {
namespace {

constexpr int64_t kLimit = 1 << 20;

// Records what a link delivers. Thread-safe.
class Recorder : public LinkDelegate {
 public:
  void OnEnvelope(Link*, v1::Envelope envelope) override {
    absl::MutexLock lock(&mu_);
    received_.push_back(std::move(envelope));
  }
  void OnLinkDown(Link*, const absl::Status& reason) override {
    {
      absl::MutexLock lock(&mu_);
      reason_ = reason;
    }
    down_.Notify();
  }
  bool WaitForCount(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return received_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
  std::vector<v1::Envelope> received() {
    absl::MutexLock lock(&mu_);
    return received_;
  }
  absl::Status reason() {
    absl::MutexLock lock(&mu_);
    return reason_;
  }
  absl::Notification& down() { return down_; }

 private:
  absl::Mutex mu_;
  std::vector<v1::Envelope> received_ ABSL_GUARDED_BY(mu_);
  absl::Status reason_ ABSL_GUARDED_BY(mu_);
  absl::Notification down_;
};

v1::Envelope Numbered(uint64_t n, size_t payload = 0) {
  v1::Envelope e;
  e.set_src(1);
  e.set_dst(2);
  e.mutable_output()->set_id(n);
  e.mutable_output()->set_data(std::string(payload, 'p'));
  return e;
}

// Copies bytes between two sockets both ways, counting them, until both ends have closed or
// it is destroyed. Owns the two fds; the destructor stops and waits for its thread.
class CountingForwarder {
 public:
  CountingForwarder(UniqueFd a, UniqueFd b)
      : a_(std::move(a)),
        b_(std::move(b)),
        stop_(::eventfd(0, EFD_CLOEXEC)),
        thread_([this] { Run(); }) {}
  ~CountingForwarder() {
    uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof(one));
    thread_.join();
  }
  int64_t b_to_a() const { return b_to_a_.load(); }

 private:
  void Run() {
    bool a_open = true, b_open = true;
    char buffer[65536];
    while (a_open || b_open) {
      struct pollfd p[3] = {{a_open ? a_.get() : -1, POLLIN, 0},
                            {b_open ? b_.get() : -1, POLLIN, 0},
                            {stop_.get(), POLLIN, 0}};
      if (::poll(p, 3, -1) < 0) continue;
      if (p[2].revents != 0) return;
      for (int i = 0; i < 2; ++i) {
        if (p[i].revents == 0) continue;
        int from = i == 0 ? a_.get() : b_.get(), to = i == 0 ? b_.get() : a_.get();
        ssize_t n = ::read(from, buffer, sizeof(buffer));
        if (n <= 0) {
          (i == 0 ? a_open : b_open) = false;
          ::shutdown(to, SHUT_WR);
          continue;
        }
        if (i == 1) b_to_a_ += n;
        // MSG_NOSIGNAL: the other end may have closed already (the test's teardown).
        for (ssize_t done = 0; done < n;) {
          ssize_t w = ::send(to, buffer + done, static_cast<size_t>(n - done), MSG_NOSIGNAL);
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) break;
          done += w;
        }
      }
    }
  }
  UniqueFd a_, b_, stop_;
  std::atomic<int64_t> b_to_a_{0};
  std::thread thread_;
};

// A server link on one end of a socketpair, a client link on the other, linked up; with
// `counted`, through a CountingForwarder (server_to_client_bytes).
class LinkPair {
 public:
  explicit LinkPair(bool counted = false) {
    auto fds = SocketPair();
    CHECK(fds.ok());
    if (counted) {
      auto server_side = SocketPair();
      CHECK(server_side.ok());
      forwarder_ = std::make_unique<CountingForwarder>(std::move(fds->second),
                                                       std::move(server_side->first));
      fds->second = std::move(server_side->second);
    }
    raw_client_fd_ = ::dup(fds->first.get());  // For writing garbage into the link.
    client_fd_ = fds->first.get();
    service_ = std::make_unique<AgentService>(kLimit);
    grpc::ServerBuilder builder;
    service_->AddTo(&builder);
    builder.SetMaxReceiveMessageSize(LinkReceiveLimit(kLimit));
    server_ = builder.BuildAndStart();
    service_->Start("test server", [this](std::shared_ptr<GrpcServerLink> link) {
      v1::Envelope hello;
      hello.mutable_hello()->mutable_info()->set_name("server");
      link->Send(std::move(hello));
      link->Start(&server_recorder);
      server_link_ = std::move(link);
      attached_.Notify();
    });
    CHECK(SetNonBlocking(fds->second.get(), true).ok());
    grpc::AddInsecureChannelFromFd(server_.get(), fds->second.Release());
    client = GrpcClientLink::Connect(std::move(fds->first), "test client", kLimit);
    CHECK(attached_.WaitForNotificationWithTimeout(absl::Seconds(10)));
    struct pollfd p = {client->first_envelope_fd(), POLLIN, 0};
    CHECK_EQ(::poll(&p, 1, 10000), 1);
    absl::StatusOr<v1::Envelope> hello = client->TakeFirstEnvelope();
    CHECK(hello.ok() && hello->hello().info().name() == "server");
    client->Start(&client_recorder);
  }
  ~LinkPair() {
    client->Close(absl::CancelledError("test over"));
    client_recorder.down().WaitForNotificationWithTimeout(absl::Seconds(10));
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_recorder.down().WaitForNotificationWithTimeout(absl::Seconds(10));
    server_link_.reset();
    client.reset();
    service_.reset();  // Ends its queue's thread.
    ::close(raw_client_fd_);
    forwarder_.reset();  // Both ends are closed now.
  }
  Link& server_link() { return *server_link_; }
  int64_t server_to_client_bytes() const { return forwarder_->b_to_a(); }
  int raw_client_fd() const { return raw_client_fd_; }
  int client_fd() const { return client_fd_; }

  Recorder client_recorder;
  Recorder server_recorder;
  std::shared_ptr<GrpcClientLink> client;

 private:
  int raw_client_fd_ = -1;
  int client_fd_ = -1;  // The client link's socket, as gRPC's poller has it.
  std::unique_ptr<AgentService> service_;
  std::unique_ptr<grpc::Server> server_;
  absl::Notification attached_;
  std::shared_ptr<GrpcServerLink> server_link_;
  std::unique_ptr<CountingForwarder> forwarder_;
};

TEST(GrpcLinkTest, EnvelopesArriveInOrderBothWays) {
  LinkPair pair;
  for (uint64_t i = 0; i < 1000; ++i) pair.client->Send(Numbered(i));
  for (uint64_t i = 0; i < 1000; ++i) pair.server_link().Send(Numbered(i, 100));
  ASSERT_TRUE(pair.server_recorder.WaitForCount(1000));
  ASSERT_TRUE(pair.client_recorder.WaitForCount(1000));
  std::vector<v1::Envelope> at_server = pair.server_recorder.received();
  std::vector<v1::Envelope> at_client = pair.client_recorder.received();
  for (uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(at_server[i].output().id(), i);
    EXPECT_EQ(at_client[i].output().id(), i);
    EXPECT_EQ(at_client[i].output().data().size(), 100u);
  }
}

// gRPC 1.51 would answer every DATA frame with WINDOW_UPDATEs of 26 bytes when nothing else is
// written (grpc_patches.cc). A relay's upstream link is such a link. 2000 envelopes, one
// at a time, 260 KB in all (four times the stream's initial window: the updates that must
// come still come, or the sender would stall).
TEST(GrpcLinkTest, AReceiverThatDoesNotAnswerSendsFewWindowUpdates) {
  LinkPair pair(/*counted=*/true);
  const int64_t before = pair.server_to_client_bytes();
  constexpr int kEnvelopes = 2000;
  for (uint64_t i = 0; i < kEnvelopes; ++i) {
    pair.client->Send(Numbered(i, 100));
    ASSERT_TRUE(pair.server_recorder.WaitForCount(i + 1)) << "envelope " << i;
  }
  const int64_t back = pair.server_to_client_bytes() - before;
  EXPECT_LT(back, kEnvelopes * 26 / 20) << "bytes the receiving end sent back";
}

// The events an epoll set of this process watches on `fd` (from /proc/self/fdinfo), or -1.
int64_t EpollEventsOf(int fd) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    if (std::filesystem::read_symlink(entry.path(), ec).string() != "anon_inode:[eventpoll]") {
      continue;
    }
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    for (std::string line; std::getline(info, line);) {
      std::istringstream fields(line);
      std::string tfd_label, events_label;
      int tfd = -1;
      std::string events_hex;
      if (fields >> tfd_label >> tfd >> events_label >> events_hex && tfd_label == "tfd:" &&
          tfd == fd) {
        return std::stoll(events_hex, nullptr, 16);
      }
    }
  }
  return -1;
}

// gRPC's poller would wake this process each time the peer read what it wrote (EPOLLOUT on a
// Unix socket; grpc_patches.cc): a link's socket is watched for room only once a write has
// had to wait for it, and such a write completes.
TEST(GrpcLinkTest, ASocketIsWatchedForRoomOnlyOnceAWriteWaited) {
  LinkPair pair;
  for (uint64_t i = 0; i < 100; ++i) pair.client->Send(Numbered(i));
  ASSERT_TRUE(pair.server_recorder.WaitForCount(100));
  const int64_t before = EpollEventsOf(pair.client_fd());
  ASSERT_GE(before, 0) << "the client link's socket is in no epoll set";
  EXPECT_EQ(before & EPOLLIN, EPOLLIN);
  EXPECT_EQ(before & EPOLLOUT, 0);
  // 7 MiB at once: far more than the socket's buffer holds.
  for (uint64_t i = 0; i < 8; ++i) pair.client->Send(Numbered(100 + i, 900 << 10));
  ASSERT_TRUE(pair.server_recorder.WaitForCount(108));
  EXPECT_EQ(pair.server_recorder.received()[107].output().data().size(), size_t{900} << 10);
  EXPECT_EQ(EpollEventsOf(pair.client_fd()) & EPOLLOUT, EPOLLOUT);
}

TEST(GrpcLinkTest, AnOversizedMessageDropsTheLinkWithAReason) {
  LinkPair pair;
  pair.client->Send(Numbered(1, 2 * kLimit));
  ASSERT_TRUE(pair.client_recorder.down().WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(pair.server_recorder.down().WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(pair.client_recorder.reason().ok());
  EXPECT_TRUE(pair.server_recorder.received().empty());
}

TEST(GrpcLinkTest, GarbageOnTheSocketDropsTheLink) {
  LinkPair pair;
  pair.client->Send(Numbered(1));
  ASSERT_TRUE(pair.server_recorder.WaitForCount(1));
  std::string garbage(4096, '\x5a');
  ASSERT_TRUE(WriteAll(pair.raw_client_fd(), garbage.data(), garbage.size()).ok());
  ASSERT_TRUE(pair.server_recorder.down().WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(pair.client_recorder.down().WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(pair.client_recorder.reason().ok());
}

// CPU time (clock ticks) of this process's "grove-link" threads, from /proc.
int64_t LinkThreadTicks() {
  int64_t ticks = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name != "grove-link") continue;
    std::ifstream stat_file(task.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
    // The fields after the name's ')': the state is field 3, utime 14 and stime 15.
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i >= 14) ticks += std::stoll(field);
    }
  }
  return ticks;
}

// The link thread polls for a while after each completion while traffic is light
// (LinkSpin), then sleeps: a link gone quiet costs no CPU. A thread that kept polling would
// take ~50 ticks in the half second measured.
TEST(GrpcLinkTest, AQuietLinkThreadSleeps) {
  ASSERT_GT(LinkSpin(), absl::ZeroDuration());
  LinkPair pair;
  for (uint64_t i = 0; i < 100; ++i) {  // A ping-pong: light traffic, polled for.
    pair.client->Send(Numbered(i));
    ASSERT_TRUE(pair.server_recorder.WaitForCount(i + 1));
    pair.server_link().Send(Numbered(i));
    ASSERT_TRUE(pair.client_recorder.WaitForCount(i + 1));
  }
  const int64_t before = LinkThreadTicks();
  absl::SleepFor(absl::Milliseconds(500));  // The window measured, not a wait for an event.
  EXPECT_LE(LinkThreadTicks() - before, 5);
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  grove::LinkQueue::Get();  // The client links' queue; each server gets its own.
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
