// Launchers for contexts reached through a command: `command:ARGV` (any argv that ends in a
// shell on the target: docker exec -i C sh, kubectl exec -i POD -- sh, unshare, setpriv...),
// `ssh:[user@]host[:port]`, `sudo[:user]` and `su[:user]`. Nothing needs to be installed on the target: a
// POSIX sh first stage fetches this program (cached by its SHA-256) and runs it as the agent
// on the command's stdin and stdout.
#ifndef GROVE_LAUNCH_REMOTE_LAUNCHER_H_
#define GROVE_LAUNCH_REMOTE_LAUNCHER_H_

#include <atomic>
#include <string>
#include <vector>

#include "link/launcher.h"

namespace grove {

// Counts of bytes sent to targets during bootstrap (first stage and upload), for figures.
struct BootstrapCounters {
  std::atomic<int64_t> bytes_sent{0};
  std::atomic<int64_t> uploads{0};
  std::atomic<int64_t> zstd_uploads{0};  // Of `uploads`, those the target took as zstd.
};
BootstrapCounters& GlobalBootstrapCounters();

// Stateless; thread-safe.
class CommandLauncher : public Launcher {
 public:
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;
};

// Options (hop keys): identity=FILE, ssh_option=KEY=VALUE (repeatable), check_host_keys=
// yes|no|accept, compression=yes|no, password=..., password_env=VAR, connect_timeout=SECONDS,
// cache_dir=DIR, name=NAME. Stateless; thread-safe.
class SshLauncher : public Launcher {
 public:
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;
};

// Options: password=..., password_env=VAR, cache_dir=DIR, name=NAME. Stateless; thread-safe.
class SudoLauncher : public Launcher {
 public:
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;
};

// `su[:user]` (root by default). su reads the password from a terminal, so this launcher
// alone runs its command on a PTY. Options: password=..., password_env=VAR, cache_dir=DIR,
// name=NAME. Stateless; thread-safe.
class SuLauncher : public Launcher {
 public:
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;
};

}  // namespace grove

#endif  // GROVE_LAUNCH_REMOTE_LAUNCHER_H_
