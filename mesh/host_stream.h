// The target's side of the mesh: a gRPC call another context opened here.
#ifndef GROVE_MESH_HOST_STREAM_H_
#define GROVE_MESH_HOST_STREAM_H_


#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_util.h"
#include "glog/logging.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/ext/health_check_service_server_builder_option.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/interceptor.h"
#include "proto/builtins.pb.h"
#include "proto/mesh.pb.h"
#include "transport/grpc_link.h"

#include "mesh/flow_control.h"
#include "mesh/metadata.h"

namespace grove::mesh_internal {

// ---------------------------------------------------------------------------------------
// The target's side.

// One gRPC call that another context opened here (grove.grpc_open), running on the host's
// in-process channel. Request messages come from the open and from grove.grpc_send calls,
// which may arrive before the open has started (they wait in the queue); the server's
// initial metadata and response messages go back as Output of the open call, and its
// status as the open's result.
//
// Ownership: shared_ptrs held by the host's stream table, the running grove.grpc_open, and
// the object itself from Start until OnDone. Thread-safe. Write-side operations (StartWrite,
// StartWritesDone, RemoveHold) are made by one thread at a time: whoever sets `busy_`.
class HostStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                         public std::enable_shared_from_this<HostStream> {
 public:
  HostStream() = default;
  HostStream(const HostStream&) = delete;
  HostStream& operator=(const HostStream&) = delete;

  // Queues a request message and/or the half-close. Never blocks.
  void Push(std::optional<std::string> message, bool half_close) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return;  // After the half-close or the end of the call.
      if (message) queue_.push_back(Item{Item::kMessage, std::move(*message)});
      if (half_close) {
        queue_.push_back(Item{Item::kHalfClose, {}});
        queue_.push_back(Item{Item::kRelease, {}});
        closed_ = true;
        half_closed_ = true;
      }
    }
    Pump();
  }

  // Starts the call on `stub` (which outlives it). `call`, the open's context, must stay
  // valid until Wait returns.
  void Start(grpc::GenericStub* stub, const v1::GrpcOpenRequest& request, CallContext* call) {
    call_ = call;
    method_ = request.method();
    const google::protobuf::MethodDescriptor* method = FindMethod(method_);
    single_response_ = method != nullptr && !method->server_streaming();
    for (const v1::GrpcMetadataEntry& e : request.metadata()) {
      if (Forwardable(e.key(), e.value())) context_.AddMetadata(e.key(), e.value());
    }
    if (call->deadline() != absl::InfiniteFuture()) {
      context_.set_deadline(absl::ToChronoTime(call->deadline()));
    }
    keep_alive_ = shared_from_this();
    stub->PrepareBidiStreamingCall(&context_, method_, grpc::StubOptions(), this);
    // Writes are started from outside the reactions (grove.grpc_send): the hold keeps the
    // call from ending under them until the half-close or the end of the responses.
    AddHold();
    StartRead(&read_);
    StartCall();
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
    }
    Pump();
  }

  // Cancels the call (the grove call was cancelled, or its caller lost). Any thread, any time
  // after Start.
  void Cancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;  // Reads never stop again.
    }
    context_.TryCancel();
    ResumeReads(/*force=*/true);
  }

  // The caller has delivered this many responses: reads resume if they had stopped.
  void Credit(const v1::GrpcCredit& credit) {
    {
      absl::MutexLock lock(&mu_);
      responses_.Acknowledged(credit);
    }
    ResumeReads(/*force=*/false);
  }

  // Blocks until the call is over; returns how it ended.
  v1::GrpcStatus Wait() {
    done_.WaitForNotification();
    return result_;
  }

  bool half_closed() const {
    absl::MutexLock lock(&mu_);
    return half_closed_;
  }

 private:
  struct Item {
    enum Kind { kMessage, kHalfClose, kRelease } kind;
    std::string data;
  };

  // Starts the next write-side operation unless one is in flight.
  void Pump() {
    Item item;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      if (!started_ || busy_ || queue_.empty()) return;
      item = std::move(queue_.front());
      queue_.pop_front();
      if (item.kind == Item::kMessage && !queue_.empty() &&
          queue_.front().kind == Item::kHalfClose) {
        queue_.pop_front();  // StartWriteLast half-closes too.
        last = true;
      }
      busy_ = item.kind != Item::kRelease;
    }
    switch (item.kind) {
      case Item::kMessage:
        write_bytes_ = static_cast<int64_t>(item.data.size());
        write_ = ToByteBuffer(std::move(item.data));
        if (last) {
          StartWriteLast(&write_, grpc::WriteOptions());
        } else {
          StartWrite(&write_);
        }
        return;
      case Item::kHalfClose:
        StartWritesDone();
        return;
      case Item::kRelease:
        RemoveHold();  // May end the call here and now: nothing of this object after it.
        return;
    }
  }

  // A write-side operation completed; `message` when it wrote a request message.
  void WriteSideDone(bool message) {
    std::optional<v1::GrpcCredit> credit;
    {
      absl::MutexLock lock(&mu_);
      busy_ = false;
      if (message) credit = requests_.Delivered(write_bytes_);
    }
    if (credit) call_->Output(kGrpcCreditStream, credit->SerializeAsString());
    Pump();
  }

  // Sends a response message back (from a reaction), then reads the next one, unless the
  // caller has too many not yet delivered: then reads stop (holding the call open, so that
  // what the server sent is not lost) until Credit or Cancel.
  void SendResponse(std::string message) {
    const int64_t bytes = static_cast<int64_t>(message.size());
    call_->Output(kGrpcMessageStream, std::move(message));
    {
      absl::MutexLock lock(&mu_);
      responses_.Sent(bytes);
      if (responses_.Full() && !cancelled_) {
        read_paused_ = true;
        AddHold();  // An atomic count only: no call-out under the lock.
        return;
      }
    }
    StartRead(&read_);
  }

  void ResumeReads(bool force) {
    {
      absl::MutexLock lock(&mu_);
      if (!read_paused_ || (!force && responses_.Full())) return;
      read_paused_ = false;
    }
    StartRead(&read_);
    RemoveHold();  // May end the call here and now: nothing of this object after it.
  }

  // grpc::ClientBidiReactor:
  //
  // The first read is started with the call (a read started after the server has finished
  // would miss its message), so the first message may complete before the headers; it then
  // waits for them, and the reads resume after the headers went out.
  void OnReadInitialMetadataDone(bool ok) override {
    ReactionOrder::Reaction reaction(&order_);
    if (ok && !single_response_) {
      v1::GrpcMetadata headers;
      CopyMetadata(context_.GetServerInitialMetadata(), headers.mutable_entries());
      call_->Output(kGrpcHeadersStream, headers.SerializeAsString());
      headers_sent_ = true;
    }
    std::optional<std::string> early;
    {
      absl::MutexLock lock(&mu_);
      headers_done_ = true;
      early.swap(early_message_);
    }
    if (early) {
      if (single_response_ && !result_.has_response()) {
        result_.set_response(std::move(*early));
        StartRead(&read_);
      } else {
        SendResponse(std::move(*early));
      }
    }
  }

  void OnReadDone(bool ok) override {
    ReactionOrder::Reaction reaction(&order_);
    if (ok) {
      std::string message = FromByteBuffer(read_);
      read_.Clear();
      if (single_response_ && !result_.has_response()) {
        // It goes with the result (the server has no more to send).
        result_.set_response(std::move(message));
        StartRead(&read_);
        return;
      }
      {
        absl::MutexLock lock(&mu_);
        if (!headers_done_) {
          early_message_ = std::move(message);
          return;
        }
      }
      SendResponse(std::move(message));
      return;
    }
    // The server has finished: nothing more needs to go out; let the call end.
    {
      absl::MutexLock lock(&mu_);
      if (!closed_) {
        closed_ = true;
        queue_.clear();
        queue_.push_back(Item{Item::kRelease, {}});
      }
    }
    Pump();
  }

  void OnWriteDone(bool /*ok*/) override {
    ReactionOrder::Reaction reaction(&order_);
    WriteSideDone(/*message=*/true);
  }
  void OnWritesDoneDone(bool /*ok*/) override {
    ReactionOrder::Reaction reaction(&order_);
    WriteSideDone(/*message=*/false);
  }

  void OnDone(const grpc::Status& status) override {
    order_.Settle();
    result_.set_code(static_cast<int>(status.error_code()));
    result_.set_message(status.error_message());
    result_.set_error_details(status.error_details());
    if (!headers_sent_) {
      result_.set_has_initial_metadata(true);
      CopyMetadata(context_.GetServerInitialMetadata(), result_.mutable_initial_metadata());
    }
    CopyMetadata(context_.GetServerTrailingMetadata(), result_.mutable_trailers());
    // The last reference may be this one: the object goes when OnDone returns.
    std::shared_ptr<HostStream> self = std::move(keep_alive_);
    done_.Notify();
  }

  grpc::ClientContext context_;
  ReactionOrder order_;
  std::string method_;
  // Set in Start; used by the reactions, which all run before Wait returns.
  CallContext* call_ = nullptr;
  std::shared_ptr<HostStream> keep_alive_;
  // Set in Start: the method returns one message, which goes with the result.
  bool single_response_ = false;
  // Reactions only (one read at a time).
  grpc::ByteBuffer read_;
  bool headers_sent_ = false;  // headers_sent_ is read in OnDone, after every reaction.
  // The thread that set busy_ only (and the completion of its operation).
  grpc::ByteBuffer write_;
  int64_t write_bytes_ = 0;
  // Written by the reactions (the response) and OnDone, read after done_.
  v1::GrpcStatus result_;
  absl::Notification done_;

  mutable absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  // No more writes will be queued (half-close queued, or the call is over).
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;
  // OnReadInitialMetadataDone has run; until then a message read waits here.
  bool headers_done_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::string> early_message_ ABSL_GUARDED_BY(mu_);
  // Responses sent to the caller; reads stop while its window is full.
  SendWindow responses_ ABSL_GUARDED_BY(mu_);
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Requests written to the service.
  DeliveryCount requests_ ABSL_GUARDED_BY(mu_);
};


}  // namespace grove::mesh_internal

#endif  // GROVE_MESH_HOST_STREAM_H_
