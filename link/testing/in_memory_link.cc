#include "link/testing/in_memory_link.h"

#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace grove {

// The state both ends of one link share.
struct InMemoryLink::Pair {
  absl::Mutex mu;
  bool down ABSL_GUARDED_BY(mu) = false;
  absl::Status reason ABSL_GUARDED_BY(mu);
  // inbox[i]: serialized envelopes waiting for end i's delivery thread.
  std::deque<std::string> inbox[2] ABSL_GUARDED_BY(mu);
  bool started[2] ABSL_GUARDED_BY(mu) = {false, false};
  std::function<void(const v1::Envelope&)> observer[2] ABSL_GUARDED_BY(mu);
  int64_t delivered[2] ABSL_GUARDED_BY(mu) = {0, 0};
  // held[i]: end i delivers nothing (what arrives waits), as a peer that froze.
  bool held[2] ABSL_GUARDED_BY(mu) = {false, false};

  void TakeDown(const absl::Status& why) {
    std::deque<std::string> dropped[2];  // Freed outside the lock.
    absl::MutexLock lock(&mu);
    if (down) return;
    down = true;
    reason = why;
    dropped[0].swap(inbox[0]);
    dropped[1].swap(inbox[1]);
  }
};

// The delivery threads of one InMemoryNetwork, and the links it made.
struct InMemoryLink::Threads {
  absl::Mutex mu;
  std::vector<std::thread> threads ABSL_GUARDED_BY(mu);
  int started ABSL_GUARDED_BY(mu) = 0;
  // Started ends whose OnLinkDown has not returned yet.
  int live ABSL_GUARDED_BY(mu) = 0;
  std::vector<std::weak_ptr<Pair>> pairs ABSL_GUARDED_BY(mu);
};

InMemoryLink::InMemoryLink(std::shared_ptr<Pair> pair, std::shared_ptr<Threads> threads,
                           int side, std::string name)
    : pair_(std::move(pair)), threads_(std::move(threads)), side_(side), name_(std::move(name)) {}

InMemoryLink::~InMemoryLink() {
  Close(absl::CancelledError(absl::StrCat(name_, ": this end of the link was destroyed")));
}

void InMemoryLink::Start(LinkDelegate* delegate) {
  CHECK(delegate != nullptr) << name_ << ": Start needs a delegate";
  {
    absl::MutexLock lock(&pair_->mu);
    CHECK(!pair_->started[side_]) << name_ << ": Start called twice";
    pair_->started[side_] = true;
  }
  // The thread keeps this end alive until its OnLinkDown has returned (Link's contract).
  std::shared_ptr<InMemoryLink> self = shared_from_this();
  absl::MutexLock lock(&threads_->mu);
  ++threads_->started;
  ++threads_->live;
  threads_->threads.emplace_back([self = std::move(self), threads = threads_, delegate]() mutable {
    self->Deliver(delegate);
    self.reset();  // May destroy this end; the link is down by now, so that closes nothing.
    absl::MutexLock lock(&threads->mu);
    --threads->live;
  });
}

void InMemoryLink::Deliver(LinkDelegate* delegate) {
  Pair& p = *pair_;
  const int side = side_;
  for (;;) {
    std::string bytes;
    std::function<void(const v1::Envelope&)> observer;
    {
      absl::MutexLock lock(&p.mu);
      auto ready = [&p, side]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu) {
        return p.down || (!p.held[side] && !p.inbox[side].empty());
      };
      p.mu.Await(absl::Condition(&ready));
      if (p.down) break;
      bytes = std::move(p.inbox[side].front());
      p.inbox[side].pop_front();
      observer = p.observer[side];
    }
    // The wire check: what arrives must parse as an envelope, as it must over gRPC.
    v1::Envelope envelope;
    if (!envelope.ParseFromString(bytes)) {
      Close(absl::DataLossError(absl::StrCat(name_, ": received ", bytes.size(),
                                             " bytes that do not parse as a grove.v1.Envelope")));
      continue;
    }
    if (observer) observer(envelope);
    {
      absl::MutexLock lock(&p.mu);
      ++p.delivered[side];
    }
    delegate->OnEnvelope(this, std::move(envelope));
  }
  absl::Status reason;
  {
    absl::MutexLock lock(&p.mu);
    reason = p.reason;
  }
  delegate->OnLinkDown(this, reason);
}

void InMemoryLink::Enqueue(std::string bytes) {
  absl::MutexLock lock(&pair_->mu);
  if (pair_->down) return;  // Dropped, as the Link contract says.
  pair_->inbox[1 - side_].push_back(std::move(bytes));
}

void InMemoryLink::Send(v1::Envelope envelope) {
  std::string bytes;
  CHECK(envelope.SerializeToString(&bytes)) << name_ << ": cannot serialize an envelope";
  Enqueue(std::move(bytes));
}

void InMemoryLink::SendBytesForTesting(std::string bytes) { Enqueue(std::move(bytes)); }

void InMemoryLink::Close(const absl::Status& reason) { pair_->TakeDown(reason); }

void InMemoryLink::HoldDelivery(bool hold) {
  absl::MutexLock lock(&pair_->mu);
  pair_->held[side_] = hold;
}

void InMemoryLink::SetObserver(std::function<void(const v1::Envelope&)> observer) {
  absl::MutexLock lock(&pair_->mu);
  pair_->observer[side_] = std::move(observer);
}

bool InMemoryLink::down() const {
  absl::MutexLock lock(&pair_->mu);
  return pair_->down;
}

absl::Status InMemoryLink::down_reason() const {
  absl::MutexLock lock(&pair_->mu);
  return pair_->reason;
}

int64_t InMemoryLink::delivered() const {
  absl::MutexLock lock(&pair_->mu);
  return pair_->delivered[side_];
}

// ---------------------------------------------------------------------------------------
// InMemoryNetwork

InMemoryNetwork::InMemoryNetwork() : threads_(std::make_shared<InMemoryLink::Threads>()) {}

InMemoryNetwork::~InMemoryNetwork() {
  CloseAll(absl::CancelledError("the in-memory network was destroyed"));
  // An end started meanwhile adds a thread; loop until none is left to join.
  for (;;) {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&threads_->mu);
      threads.swap(threads_->threads);
    }
    if (threads.empty()) break;
    for (std::thread& thread : threads) thread.join();
  }
}

InMemoryNetwork::Ends InMemoryNetwork::Connect(std::string a_name, std::string b_name) {
  auto pair = std::make_shared<InMemoryLink::Pair>();
  Ends ends;
  ends.a.reset(new InMemoryLink(pair, threads_, 0, std::move(a_name)));
  ends.b.reset(new InMemoryLink(pair, threads_, 1, std::move(b_name)));
  absl::MutexLock lock(&threads_->mu);
  threads_->pairs.push_back(pair);
  return ends;
}

void InMemoryNetwork::CloseAll(const absl::Status& reason) {
  std::vector<std::shared_ptr<InMemoryLink::Pair>> pairs;
  {
    absl::MutexLock lock(&threads_->mu);
    for (const auto& weak : threads_->pairs) {
      if (auto pair = weak.lock()) pairs.push_back(std::move(pair));
    }
  }
  for (const auto& pair : pairs) pair->TakeDown(reason);
}

bool InMemoryNetwork::WaitUntilAllDown(absl::Duration timeout) {
  absl::MutexLock lock(&threads_->mu);
  InMemoryLink::Threads* t = threads_.get();
  auto all_down = [t]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) { return t->live == 0; };
  return threads_->mu.AwaitWithTimeout(absl::Condition(&all_down), timeout);
}

int InMemoryNetwork::live_ends() const {
  absl::MutexLock lock(&threads_->mu);
  return threads_->live;
}

int InMemoryNetwork::threads_started() const {
  absl::MutexLock lock(&threads_->mu);
  return threads_->started;
}

v1::Envelope CallEnvelope(uint64_t src, uint64_t dst, uint64_t id, const std::string& function,
                          const google::protobuf::Message& argument) {
  v1::Envelope envelope;
  envelope.set_src(src);
  envelope.set_dst(dst);
  v1::Call* call = envelope.mutable_call();
  call->set_id(id);
  call->set_function(function);
  call->set_argument_type(argument.GetDescriptor()->full_name());
  call->set_argument(argument.SerializeAsString());
  return envelope;
}

}  // namespace grove
