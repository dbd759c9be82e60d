// File push: copy a directory tree from this program into two contexts, one of them two hops
// away, then pull one file back.
//
//   bazel run //examples/push -- SRC_DIR DEST_DIR
#include <iostream>

#include "grove.h"

int main(int argc, char** argv) {
  grove::Functions functions;
  return grove::Main(argc, argv, functions, [argc, argv](grove::Master& master) {
    if (argc != 3) {
      std::cerr << "usage: push SRC_DIR DEST_DIR\n";
      return 2;
    }
    const std::string src = argv[1], dest = argv[2];
    absl::StatusOr<grove::Context> near = master.Spawn("local,name=near");
    absl::StatusOr<grove::Context> far = master.SpawnPath("local,name=middle/local,name=far");
    if (!near.ok() || !far.ok()) {
      std::cerr << (near.ok() ? far.status() : near.status()) << "\n";
      return 1;
    }
    grove::TransferOptions options;
    options.recursive = true;
    // One copy of each byte per link: the middle context relays to `far`.
    absl::StatusOr<grove::TransferSummary> pushed = grove::PushFiles(
        master.router(), {near->id(), far->id()}, src, dest + "/pushed", options);
    if (!pushed.ok() || !pushed->ok()) {
      std::cerr << "push failed\n";
      return 1;
    }
    std::cout << "pushed " << pushed->entries << " entries, " << pushed->bytes << " bytes\n";
    absl::StatusOr<grove::TransferSummary> pulled =
        grove::PullFiles(master.router(), far->id(), dest + "/pushed", dest + "/pulled", options);
    if (!pulled.ok() || !pulled->ok()) {
      std::cerr << "pull failed\n";
      return 1;
    }
    std::cout << "pulled " << pulled->entries << " entries back\n";
    return 0;
  });
}
