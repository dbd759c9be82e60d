// Mesh: the program's own gRPC services, hosted in every context and reached through the
// tree with ordinary generated stubs.
//
//   // main(), in every context (the program replicates itself):
//   MyServiceImpl service;                 // a generated sync or callback service
//   grove::Functions functions;
//   functions.AddService(&service);
//   ...
//   // anywhere, for instance in the master:
//   absl::StatusOr<grove::Context> leaf = master.SpawnPath("local/local,name=leaf");
//   auto stub = my::MyService::NewStub(grove::ChannelTo(*leaf));
//   grpc::ClientContext context;
//   grpc::Status status = stub->Unary(&context, request, &reply);  // runs in leaf
//
// How it works. Every context hosts the registered services, the standard health service
// (grpc.health.v1.Health) and server reflection on an in-process gRPC server with no port
// (built on first use). ChannelTo returns a channel to a second in-process server in the
// calling context whose generic handler forwards each call as grove calls, so routing, the
// who-may-call policy, deadlines, cancellation and lost-context errors are the routers' own:
//
//   stub ─> ChannelTo's proxy ─ grove.grpc_open {method, metadata, stream} ─> target
//                             ─ grove.grpc_send {stream, message|half-close} ─> (in order)
//                             <─ Output: initial metadata, each response message ─
//                             <─ reply to grove.grpc_open: status, message, trailers ─
//
// In the target, grove.grpc_open starts the call on the host's in-process channel and
// returns when it ends; grove.grpc_send (run inline, in arrival order) queues a message
// into it. A method this program knows to take one request (unary, server-streaming) sends
// it with the open; one known to return one response (unary, client-streaming) gets it,
// with the headers, in the open's reply: a unary call is one grove call and its reply. The
// gRPC status, message, error details and metadata reach the client unchanged; a
// grove-level failure (the target or a context on the way lost, no route, the caller not
// allowed) ends the call with that status: UNAVAILABLE naming the lost context, say.
//
// Policy: the mesh built-ins are callable by ancestors only (the default for functions), so a
// context reaches the services of its descendants, and calls from below or the side end in
// PERMISSION_DENIED.
//
// Flow control, end to end and in each direction: a side stops reading from its end (the
// service's responses in the target, the client's requests in the caller) once 4096 messages
// or 8 MiB it sent are not yet delivered at the other end, which reports what it delivered
// every 1024 messages or 2 MiB (grove.grpc_send {consumed}, Output kGrpcCreditStream). So a
// slow reader holds the writer back as with plain gRPC, and the contexts on the way buffer
// at most a window per stream.
//
// Limits: a message is at most the tree's max_message_bytes. A ChannelTo channel names its
// target in the metadata entry "grove-target" of each call (an interceptor adds it), which
// is not forwarded, nor are gRPC's own headers. Async (completion-queue) services are not
// supported. Linking the mesh registers gRPC's reflection plugin for every server the
// program builds (see NoServerPluginsScope).
#ifndef GROVE_MESH_MESH_H_
#define GROVE_MESH_MESH_H_

#include <memory>

#include "grpcpp/channel.h"
#include "grpcpp/impl/server_builder_option.h"
#include "router/component.h"
#include "router/context.h"
#include "router/functions.h"
#include "router/router.h"

namespace grove {

// Output streams of grove.grpc_open (CallContext::Output), reserved for the mesh: the
// server's initial metadata (a v1.GrpcMetadata), each response message (raw bytes), the
// request messages delivered so far (a v1.GrpcCredit, for flow control), and (empty, when
// the open asked for it) that the call is starting on the service.
inline constexpr int kGrpcHeadersStream = 16;
inline constexpr int kGrpcMessageStream = 17;
inline constexpr int kGrpcCreditStream = 18;
inline constexpr int kGrpcAcceptedStream = 19;

// A channel to the services hosted in `context`, for generated stubs (or a GenericStub).
// Any number of calls may use it at once, from any thread. The channel is shared: calling
// ChannelTo again for the same context returns the same one. Once the router of `context`
// is shut down (or destroyed) its calls fail with UNAVAILABLE; the channel may outlive the
// router (it keeps its in-process server), but must not be released for the last time on a
// gRPC callback thread after that (releasing it shuts that server down, which waits for
// gRPC's callbacks). Starting calls while the router is being destroyed is a programmer
// error, like any other use of a router being destroyed. Calls to this context itself go
// through its router too.
std::shared_ptr<grpc::Channel> ChannelTo(const Context& context);

// The mesh as a component of each router (router/component.h): its built-ins
// (grove.grpc_open, grove.grpc_send) hosting the router's program's services (health and
// reflection only when it has none), and the state ChannelTo finds.
Component MeshComponent();

// A ServerBuilder option that keeps process-wide server plugins off a server: linking the mesh
// (gRPC's reflection library) registers server reflection for every server the process
// builds, and with it a sync thread pool. grove's own servers (the agent's) serve only what
// they register.
std::unique_ptr<grpc::ServerBuilderOption> WithoutServerPlugins();

// While one lives, ServerBuilders that its thread makes do not even create the process-wide
// plugins (which the option above would drop): a ServerBuilder creates every registered
// plugin as it is made, and creating the reflection plugin builds the descriptors of
// descriptor.proto (80 KB of heap, 0.4 ms), for nothing on the agent's own server. Plugins
// registered (gRPC's reflection library does, as the program starts) reach gRPC only when a
// ServerBuilder is made outside such a scope; until then they wait, in order, and from then
// on every ServerBuilder makes them, scope or not (an agent makes its own server first).
// (The link routes ServerBuilder's constructors and InternalAddPluginFactory through
// mesh/server_plugins.cc: mesh/BUILD.bazel, --wrap.) Nestable.
class NoServerPluginsScope {
 public:
  NoServerPluginsScope();
  ~NoServerPluginsScope();
  NoServerPluginsScope(const NoServerPluginsScope&) = delete;
  NoServerPluginsScope& operator=(const NoServerPluginsScope&) = delete;
};

}  // namespace grove

#endif  // GROVE_MESH_MESH_H_
