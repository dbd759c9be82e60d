// The floors a round trip is compared with: what two processes on this machine take to
// exchange a message without grove, measured in the same run as grove's own figures (this
// VM's speed drifts by a third over hours, so only figures of one run compare). `grove bench`
// reports them beside `rtt_us`; //tools:grpc_floor measures them with gRPC as Debian builds it
// (the grove binary carries grove's patches to gRPC, transport/grpc_patches.cc).
//
// Each floor runs in a process of its own (this program again; its main() must call
// RunFloorProcess first), which starts a peer process that echoes on a socketpair, its fd 3,
// until its stdin ends; both are reaped before FloorUs returns.
//   socket: a byte, read and written back: the kernel's round trip, two wake-ups.
//   grpc:   a gRPC server with one generic callback service whose bidi streams echo each
//           message: gRPC on the same transport as a link, without grove.
//
// Thread-safe: each floor runs in processes of its own (two at once would disturb each other's
// figures).
#ifndef GROVE_TOOLS_FLOORS_H_
#define GROVE_TOOLS_FLOORS_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grove::cli {

// The floors, by metric name:
//   socketpair_rtt_us     a byte through a socket peer;
//   grpc_stream_rtt_us    an empty message on a gRPC bidi stream to a grpc peer, written and
//                         read by the calling thread with gRPC's blocking API (which polls the
//                         channel itself while it waits), as a gRPC program that wants one
//                         reply at a time would;
//   grpc_callback_rtt_us  the same ping-pong driven by gRPC's callback API alone: each reply's
//                         callback, on gRPC's own thread, writes the next message, and no
//                         thread of the program waits in between.
inline constexpr const char* kFloors[] = {"socketpair_rtt_us", "grpc_stream_rtt_us",
                                          "grpc_callback_rtt_us"};

// The median of `calls` round trips (after 200 to warm up) of floor `metric`, in
// microseconds, measured by a fresh process of this program (so that no thread of the caller's
// own, such as a link thread polling gRPC's shared epoll set, takes part) against its peer.
absl::StatusOr<double> FloorUs(const std::string& metric, int calls);

// What main() does first in a program that measures floors: when argv asks for a floor's
// measuring process or its peer, runs it and returns its exit status; otherwise nothing.
std::optional<int> RunFloorProcess(int argc, char** argv);

// The value below which a fraction `p` of `v` lies (0.5: the median); 0 for none.
double Percentile(std::vector<double> v, double p);

// Times `round_trip` `calls` times, after 200 untimed calls to warm up (whose failures are
// ignored), and stops at the first timed call that fails: microseconds, in call order.
std::vector<double> RoundTripTimesUs(int calls, const std::function<bool()>& round_trip);

// One figure on stdout (flushed): with `json`, one object per line,
// {"peer":..,"metric":..,"value":..,"unit":..}; otherwise aligned columns followed by
// `reference`, what the figure is held against ("" for nothing).
void PrintFigure(bool json, const char* peer, const std::string& metric, double value,
                 const std::string& unit, const char* reference = "");

}  // namespace grove::cli

#endif  // GROVE_TOOLS_FLOORS_H_
