// The standard wiring of a context, in one place for the master (master/) and every agent
// (child/): the router's options with the components every context carries (files, mesh),
// and a launcher for every method a hop may name.
#ifndef GROVE_LAUNCH_STANDARD_H_
#define GROVE_LAUNCH_STANDARD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "launch/fork_launcher.h"
#include "launch/local_launcher.h"
#include "launch/remote_launcher.h"
#include "proto/grove.pb.h"
#include "router/functions.h"
#include "router/router.h"

namespace grove {

// A router's options for context `self`: its ancestors (nearest first), the program's
// functions (not owned; must outlive the router), and the standard components
// (FilesComponent, MeshComponent). The caller sets the rest.
Router::Options StandardRouterOptions(const v1::ContextInfo& self,
                                      std::vector<uint64_t> ancestors,
                                      const Functions* functions, int64_t max_message_bytes,
                                      int min_log_level, int verbosity);

// One launcher for each method: local, fork, command, ssh, sudo, su. Owns them; they must
// outlive every router they are added to. Thread-safe (each launcher is).
class StandardLaunchers {
 public:
  // `zygote` serves the fork method; when null, a fork fails with `why_no_zygote`.
  StandardLaunchers(std::shared_ptr<Zygote> zygote, std::string why_no_zygote);
  StandardLaunchers(const StandardLaunchers&) = delete;
  StandardLaunchers& operator=(const StandardLaunchers&) = delete;

  // Adds every launcher to `router` under its method's name.
  void AddTo(Router& router);

 private:
  LocalLauncher local_;
  ForkLauncher fork_;
  CommandLauncher command_;
  SshLauncher ssh_;
  SudoLauncher sudo_;
  SuLauncher su_;
};

}  // namespace grove

#endif  // GROVE_LAUNCH_STANDARD_H_
