// The zygote's wire protocol (see launch/zygote.h): the messages a context, its zygote and
// the zygote's fork children exchange over SOCK_SEQPACKET sockets, with fds attached
// (SCM_RIGHTS), and the process helpers both ends use. Internal to launch/.
#ifndef GROVE_LAUNCH_ZYGOTE_WIRE_H_
#define GROVE_LAUNCH_ZYGOTE_WIRE_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/fd.h"
#include "launch/zygote.h"

namespace grove::zygote_wire {

// Where a zygote run again (Zygote::StartOnFirstFork) finds its socket.
inline constexpr int kExecutedZygoteSocketFd = 3;
// Largest request (the agent's argv); SEQPACKET carries it as one datagram.
inline constexpr size_t kMaxMessage = 60000;

// Message kinds. Context -> zygote: kFork. Zygote -> context: kForked, kFailed, kExited.
// Zygote -> spare: kBecome.
inline constexpr char kFork = 'F';     // seq, argv joined by '\0'; fd: output
inline constexpr char kForked = 'P';   // seq, pid; fds: pidfd, the link's other end
inline constexpr char kFailed = 'E';   // seq, errno, text
inline constexpr char kExited = 'X';   // pid, wait status
inline constexpr char kBecome = 'B';   // argv joined by '\0'; fd: output
// Fork child -> zygote.
inline constexpr char kStarted = 'S';  // (nothing): it is up

// Fixed-size fields of a message, after its kind byte.
void PutInt(std::string* out, int32_t v);
bool GetInt(const char* data, size_t size, size_t* at, int32_t* v);

// Sends one datagram with `fds` attached. Returns 0 or an errno.
int SendMessage(int socket, const std::string& data, const std::vector<int>& fds, int flags);

// Receives one datagram into `data` (resized to what arrived) and the fds attached to it
// (close-on-exec). Returns the byte count, 0 at the end of file, or -errno. A datagram that
// did not fit, or whose fds did not, comes back with `*truncated` set.
ssize_t ReceiveMessage(int socket, std::string* data, std::vector<UniqueFd>* fds,
                       bool* truncated, int flags);

// The argv joined by '\0' in `data` from `at` on.
std::vector<std::string> SplitArgv(const std::string& data, size_t at);

// A kFailed answer to request `seq`.
std::string Failed(int32_t seq, int err, const std::string& text);

// The threads of this process (/proc/self/task), or -1 when that cannot be told.
int CountThreads();

// Closes every fd but 0, 1, 2 and `keep` (single-threaded callers only).
void CloseAllFdsExcept(std::initializer_list<int> keep);

// In a fork child, from its fork until its agent takes them (Zygote::Start): its end of a
// socket to the zygote it was forked from, and that zygote's pid. Set by the fork child's
// start (zygote_loop.cc); single-threaded use only.
extern int inherited_zygote_socket;
extern pid_t inherited_zygote_pid;

// Serves `socket` as the zygote of process `context`; never returns. `forked`: forked by
// the context's main thread (Zygote::Start), rather than run again by any thread of it
// (Zygote::StartOnFirstFork). Single-threaded callers only.
[[noreturn]] void RunZygote(int socket, pid_t context, bool forked, const Zygote::Entry& entry);

}  // namespace grove::zygote_wire

#endif  // GROVE_LAUNCH_ZYGOTE_WIRE_H_
