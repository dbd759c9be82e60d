// grpc_floor: the floors of a round trip (floors.h) with gRPC as Debian builds it, none of
// grove's patches to it linked in (transport/grpc_patches.cc), for comparison with the same
// figures from `grove bench`, whose peers carry them.
//
//   bazel run //tools:grpc_floor [-- --json]
#include <cstdio>
#include <cstring>
#include <optional>

#include "absl/status/statusor.h"
#include "tools/floors.h"

int main(int argc, char** argv) {
  using namespace grove::cli;
  if (std::optional<int> status = RunFloorProcess(argc, argv)) return *status;
  const bool json = argc == 2 && std::strcmp(argv[1], "--json") == 0;
  if (argc > 1 && !json) {
    fprintf(stderr, "usage: grpc_floor [--json]\n");
    return 2;
  }
  for (const char* floor : kFloors) {
    absl::StatusOr<double> us = FloorUs(floor, 2000);
    if (!us.ok()) {
      fprintf(stderr, "grpc_floor: %s\n", us.status().ToString().c_str());
      return 1;
    }
    PrintFigure(json, "grpc", floor, *us, "us");
  }
  return 0;
}
