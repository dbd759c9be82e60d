#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/io/coded_stream.h"
#include "gtest/gtest.h"
#include "proto/grove.pb.h"
#include "transport/grpc_link.h"

namespace grove {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

// An Output envelope numbered `seq` carrying `payload` bytes. Its size depends only on
// `payload` for 0 < seq < 128 (one-byte varints; a zero id is not serialized at all).
v1::Envelope Numbered(uint64_t seq, size_t payload) {
  v1::Envelope e;
  e.set_dst(1);
  e.set_src(2);
  e.mutable_output()->set_id(seq);
  e.mutable_output()->set_stream(1);
  e.mutable_output()->set_data(std::string(payload, static_cast<char>('a' + seq % 26)));
  return e;
}

// An envelope's bytes inside a batch: tag, length and body.
int64_t Size(const v1::Envelope& e) {
  size_t body = e.ByteSizeLong();
  return static_cast<int64_t>(
      1 + google::protobuf::io::CodedOutputStream::VarintSize64(body) + body);
}

std::vector<uint64_t> Seqs(const v1::Batch& batch) {
  std::vector<uint64_t> seqs;
  for (const v1::Envelope& e : batch.envelopes()) seqs.push_back(e.output().id());
  return seqs;
}

int64_t EnvelopeBytes(const v1::Batch& batch) {
  int64_t bytes = 0;
  for (const v1::Envelope& e : batch.envelopes()) bytes += Size(e);
  return bytes;
}

// Fills batches until the queue is empty.
std::vector<v1::Batch> Drain(OutQueue& queue) {
  std::vector<v1::Batch> batches;
  while (!queue.empty()) {
    v1::Batch batch;
    queue.Fill(&batch);
    EXPECT_GT(batch.envelopes_size(), 0) << "Fill made no progress";
    if (batch.envelopes_size() == 0) break;
    batches.push_back(std::move(batch));
  }
  return batches;
}

TEST(OutQueueTest, CountsTheBytesItHolds) {
  OutQueue queue(1000);
  EXPECT_EQ(queue.bytes(), 0);
  const v1::Envelope a = Numbered(1, 600), b = Numbered(2, 600);
  queue.Push(a);
  queue.Push(b);
  EXPECT_EQ(queue.bytes(), Size(a) + Size(b));
  v1::Batch batch;
  queue.Fill(&batch);  // Only `a` fits.
  ASSERT_EQ(batch.envelopes_size(), 1);
  EXPECT_EQ(queue.bytes(), Size(b));
  Drain(queue);
  EXPECT_EQ(queue.bytes(), 0);
}

TEST(OutQueueTest, StartsEmptyAndFillsNothing) {
  OutQueue queue(1024);
  EXPECT_TRUE(queue.empty());
  v1::Batch batch;
  queue.Fill(&batch);
  EXPECT_EQ(batch.envelopes_size(), 0);
  EXPECT_TRUE(queue.empty());
}

TEST(OutQueueTest, AllSmallEnvelopesGoInOneBatchInOrder) {
  OutQueue queue(int64_t{64} << 20);
  for (uint64_t i = 0; i < 100; ++i) queue.Push(Numbered(i, 10));
  EXPECT_FALSE(queue.empty());
  v1::Batch batch;
  queue.Fill(&batch);
  EXPECT_TRUE(queue.empty());
  ASSERT_EQ(batch.envelopes_size(), 100);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(batch.envelopes(i).output().id(), static_cast<uint64_t>(i));
    EXPECT_EQ(batch.envelopes(i).output().data(), Numbered(i, 10).output().data());
  }
}

TEST(OutQueueTest, RespectsTheByteLimit) {
  const int64_t size = Size(Numbered(1, 50));
  OutQueue queue(3 * size + size / 2);  // Room for three and a half.
  for (uint64_t i = 0; i < 10; ++i) queue.Push(Numbered(i, 50));
  std::vector<v1::Batch> batches = Drain(queue);
  ASSERT_EQ(batches.size(), 4u);
  EXPECT_THAT(Seqs(batches[0]), ElementsAre(0, 1, 2));
  EXPECT_THAT(Seqs(batches[1]), ElementsAre(3, 4, 5));
  EXPECT_THAT(Seqs(batches[2]), ElementsAre(6, 7, 8));
  EXPECT_THAT(Seqs(batches[3]), ElementsAre(9));
  for (const v1::Batch& batch : batches) EXPECT_LE(EnvelopeBytes(batch), 3 * size + size / 2);
}

TEST(OutQueueTest, EnvelopesExactlyFillingTheLimitShareABatch) {
  const int64_t size = Size(Numbered(1, 20));
  OutQueue queue(2 * size);
  for (uint64_t i = 0; i < 5; ++i) queue.Push(Numbered(i, 20));
  std::vector<v1::Batch> batches = Drain(queue);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_THAT(Seqs(batches[0]), ElementsAre(0, 1));
  EXPECT_THAT(Seqs(batches[1]), ElementsAre(2, 3));
  EXPECT_THAT(Seqs(batches[2]), ElementsAre(4));
}

TEST(OutQueueTest, EnvelopeLargerThanTheLimitGoesAloneAndWhole) {
  OutQueue queue(100);
  queue.Push(Numbered(0, 10));
  queue.Push(Numbered(1, 500));
  queue.Push(Numbered(2, 10));
  queue.Push(Numbered(3, 10));
  std::vector<v1::Batch> batches = Drain(queue);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_THAT(Seqs(batches[0]), ElementsAre(0));
  ASSERT_THAT(Seqs(batches[1]), ElementsAre(1));
  // Never split: the big one arrives whole.
  EXPECT_EQ(batches[1].envelopes(0).output().data(), std::string(500, 'b'));
  EXPECT_EQ(batches[1].envelopes(0).SerializeAsString(), Numbered(1, 500).SerializeAsString());
  EXPECT_THAT(Seqs(batches[2]), ElementsAre(2, 3));
}

TEST(OutQueueTest, OversizedEnvelopeAtTheHeadStillGoes) {
  OutQueue queue(100);
  queue.Push(Numbered(0, 1000));
  queue.Push(Numbered(1, 1000));
  queue.Push(Numbered(2, 5));
  std::vector<v1::Batch> batches = Drain(queue);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_THAT(Seqs(batches[0]), ElementsAre(0));
  EXPECT_THAT(Seqs(batches[1]), ElementsAre(1));
  EXPECT_THAT(Seqs(batches[2]), ElementsAre(2));
}

TEST(OutQueueTest, PreservesOrderAcrossPushesBetweenFills) {
  const int64_t size = Size(Numbered(1, 30));
  OutQueue queue(4 * size);
  std::vector<uint64_t> sent, received;
  uint64_t next = 0;
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 3 + round; ++i) {
      sent.push_back(next);
      queue.Push(Numbered(next++, 30));
    }
    v1::Batch batch;  // One write completes between bursts.
    queue.Fill(&batch);
    EXPECT_LE(batch.envelopes_size(), 4);
    for (uint64_t seq : Seqs(batch)) received.push_back(seq);
  }
  for (const v1::Batch& batch : Drain(queue)) {
    for (uint64_t seq : Seqs(batch)) received.push_back(seq);
  }
  EXPECT_THAT(received, ElementsAreArray(sent));
}

TEST(LinkReceiveLimitTest, LeavesRoomForFramingAndClamps) {
  EXPECT_GE(LinkReceiveLimit(1 << 20), (1 << 20) + 1024);
  EXPECT_EQ(LinkReceiveLimit(int64_t{1} << 40), INT_MAX);
}

// OutQueue counts each envelope with its framing inside the Batch (a tag byte and a length
// varint per envelope), so a batch of many small envelopes serializes to at most `max_bytes`
// and fits LinkReceiveLimit; counting the envelopes' own bytes alone would overshoot both,
// and the receiver would reject the batch and fail the link.
TEST(OutQueueTest, BatchOfSmallEnvelopesFitsTheReceiveLimit) {
  const int64_t max_bytes = 512 << 10;
  OutQueue queue(max_bytes);
  v1::Envelope tiny;
  tiny.set_dst(1);
  tiny.set_src(2);
  const int64_t n = max_bytes / Size(tiny);
  for (int64_t i = 0; i < n; ++i) queue.Push(tiny);
  v1::Batch batch;
  queue.Fill(&batch);
  EXPECT_LE(static_cast<int64_t>(batch.ByteSizeLong()), max_bytes);
  EXPECT_LE(static_cast<int64_t>(batch.ByteSizeLong()), LinkReceiveLimit(max_bytes));
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
