// The fixture every multi-process test uses: it fails a test that leaves processes, zombies,
// threads or fds behind.
#ifndef GROVE_TESTS_LEAK_CHECK_H_
#define GROVE_TESTS_LEAK_CHECK_H_

#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace grove::testing {

// Snapshot of what this process holds.
struct ProcessState {
  std::set<std::string> fds;   // "fd -> target"
  int threads = 0;
  std::vector<std::string> thread_names;
  std::vector<std::string> children;  // "pid state cmdline" of direct children
  // Live processes (not zombies) other than this one running this same binary: agents of
  // this test, wherever they were reparented.
  std::vector<std::string> agents;
};

ProcessState CaptureState();

// The target of the symbolic link at `path` ("" when it cannot be read).
std::string Readlink(const std::string& path);

// How much slower everything runs under a sanitizer, for the few deadlines that measure
// responsiveness rather than correctness (the suites also run under TSan on two cores, two
// tests at a time).
#if defined(__SANITIZE_THREAD__)
inline constexpr int kSlowdown = 10;
#elif defined(__SANITIZE_ADDRESS__)
inline constexpr int kSlowdown = 3;
#else
inline constexpr int kSlowdown = 1;
#endif

// Whether `target`, an fd's target in process `pid`, is the sanitizer runtime's own: it reads
// the process's /proc/self/maps now and then (ThreadSanitizer's background thread does, in
// every process), and a listing of fds can catch that one open.
bool SanitizerRuntimeFd(int pid, const std::string& target);

// Compares the state after the test with the one before, waiting (up to 10 s) for things that
// end asynchronously (gRPC threads, exiting children) to settle; reaps leaked children.
class GroveTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

 private:
  ProcessState before_;
};

}  // namespace grove::testing

#endif  // GROVE_TESTS_LEAK_CHECK_H_
