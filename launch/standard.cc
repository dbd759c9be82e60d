#include "launch/standard.h"

#include <utility>

#include "files/files.h"
#include "mesh/mesh.h"

namespace grove {

Router::Options StandardRouterOptions(const v1::ContextInfo& self,
                                      std::vector<uint64_t> ancestors,
                                      const Functions* functions, int64_t max_message_bytes,
                                      int min_log_level, int verbosity) {
  Router::Options options;
  options.self = self;
  options.ancestors = std::move(ancestors);
  options.functions = functions;
  options.max_message_bytes = max_message_bytes;
  options.min_log_level = min_log_level;
  options.verbosity = verbosity;
  options.components = {FilesComponent(), MeshComponent()};
  return options;
}

StandardLaunchers::StandardLaunchers(std::shared_ptr<Zygote> zygote, std::string why_no_zygote)
    : fork_(std::move(zygote), std::move(why_no_zygote)) {}

void StandardLaunchers::AddTo(Router& router) {
  router.AddLauncher("local", &local_);
  router.AddLauncher("fork", &fork_);
  router.AddLauncher("command", &command_);
  router.AddLauncher("ssh", &ssh_);
  router.AddLauncher("sudo", &sudo_);
  router.AddLauncher("su", &su_);
}

}  // namespace grove
