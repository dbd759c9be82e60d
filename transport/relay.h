// Relay: pumps bytes between a pair of stdio pipes and a socket, because gRPC needs a socket
// and methods like ssh and sudo give a process only pipes. EOF is carried across (EOF on the
// input pipe becomes shutdown(SHUT_WR) on the socket; EOF on the socket closes the output).
#ifndef GROVE_TRANSPORT_RELAY_H_
#define GROVE_TRANSPORT_RELAY_H_

#include <thread>

#include "common/fd.h"

namespace grove {

// Owns its fds and two threads, which end at EOF on their input. Not copyable. The destructor
// joins the threads (shut the inputs down first).
class Relay {
 public:
  Relay(UniqueFd in, UniqueFd out, UniqueFd socket);
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;
  ~Relay();

 private:
  UniqueFd in_, out_, socket_;
  std::thread up_, down_;
};

}  // namespace grove

#endif  // GROVE_TRANSPORT_RELAY_H_
