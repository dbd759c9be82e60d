#include "transport/relay.h"

#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

namespace grove {
namespace {

// Copies until EOF or an error; false on error.
bool Pump(int from, int to) {
  char buffer[65536];
  for (;;) {
    ssize_t n = ::read(from, buffer, sizeof(buffer));
    if (n == 0) return true;
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (!WriteAll(to, buffer, static_cast<size_t>(n)).ok()) return false;
  }
}

}  // namespace

Relay::Relay(UniqueFd in, UniqueFd out, UniqueFd socket)
    : in_(std::move(in)), out_(std::move(out)), socket_(std::move(socket)) {
  up_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "grove-relay-in");
    Pump(in_.get(), socket_.get());
    ::shutdown(socket_.get(), SHUT_WR);
  });
  down_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "grove-relay-out");
    Pump(socket_.get(), out_.get());
    ::close(out_.Release());
    ::shutdown(socket_.get(), SHUT_RD);
  });
}

Relay::~Relay() {
  if (up_.joinable()) up_.join();
  if (down_.joinable()) down_.join();
}

}  // namespace grove
