// The grove CLI's verbs and the functions the CLI program registers (it replicates itself
// like any grove program).
#ifndef GROVE_TOOLS_CLI_H_
#define GROVE_TOOLS_CLI_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "master/master.h"
#include "proto/control.grpc.pb.h"

namespace grove::cli {

// The CLI program's own functions (bench sink, spawning from inside a child for the demo).
const Functions& CliFunctions();

// `grove --version`: the version and the build (this program's SHA-256).
int Version();
int Usage(int status);
// `grove --man`: the manual page (roff), from the same texts as --help.
int Manual();
// `grove --completion bash`: a bash completion script, from the same table of verbs.
int Completion(const std::string& shell);
int VerbHelp(const std::string& verb);

// grove run's arguments, for a private tree and for a resident one.
struct RunArgs {
  std::vector<std::string> paths;  // @GROUPs expanded
  std::vector<std::string> argv;
  bool json = false;
  int jobs = 0;  // 0: no limit
  double timeout_s = 0;  // 0: none
  double connect_s = 30;
  std::string inventory;
};
// False (having said why on stderr) when they are not [OPTIONS] PATH... -- ARGV...
bool ParseRunArgs(const std::vector<std::string>& args, RunArgs* out);

// grove call's arguments: [--timeout S] PATH FUNCTION 'JSON' into `args` (three) and
// `timeout_s` (0: none). False (having said why on stderr) otherwise.
bool ParseCallArgs(const std::vector<std::string>& raw_args, std::vector<std::string>* args,
                   double* timeout_s);

int Run(Master& master, const std::vector<std::string>& args);
int Tree(Master& master, const std::vector<std::string>& args);
int Bench(Master& master, const std::vector<std::string>& args);
int Demo(Master& master, const std::vector<std::string>& args);
int Push(Master& master, const std::vector<std::string>& args);
int Pull(Master& master, const std::vector<std::string>& args);
int Call(Master& master, const std::vector<std::string>& args);
// grove grpc PATH list | grove grpc PATH SERVICE/METHOD 'JSON' (tools/grpc_cli.cc).
int Grpc(Master& master, const std::vector<std::string>& args);

// Prints the registry of `master` as a tree (or, with `json`, a JSON array).
void PrintTree(Master& master, bool json, bool include_gone);
// The same for records from anywhere (a resident master's): `self` is the root.
void PrintRecords(const ContextRecord& self, const std::vector<ContextRecord>& records,
                  bool json);

// ---- Resident trees (tools/resident_cli.cc) ----
// grove up [SPEC] ..., grove down, grove status, grove logs, grove stop PATH, grove reload.
int Up(const std::vector<std::string>& args);
int Down(const std::vector<std::string>& args);
int Status(const std::vector<std::string>& args);
int Logs(const std::vector<std::string>& args);
int StopPath(const std::vector<std::string>& args);
int Reload(const std::vector<std::string>& args);
// grove push/pull in a resident master's tree (tools/files_cli.cc): `verb` is "push" or "pull".
int AttachedTransfer(v1::Control::Stub& stub, const char* verb,
                     const std::vector<std::string>& args);
// The ssh command line that reaches `hop`'s host as grove's ssh launcher would (user, port,
// identity, ssh_option=...), with `options` first, ending with the host.
std::vector<std::string> SshArgv(const Hop& hop, std::vector<std::string> options);
// What grove bench holds `metric` against ("target <= 60; mitogen 173, ..."), or "".
const char* BenchReference(const std::string& metric);
// grove bench's rows measured against a resident master of its own (tools/resident_bench.cc):
// those `wants` names; 0, or 1 when one could not be measured.
int BenchResident(bool json, const std::function<bool(const std::string&)>& wants,
                  const std::string& ssh_hop);
// grove bench's rows for gRPC services (tools/service_bench.cc), likewise: through the mesh in
// `master`'s tree, and through the ingress of a resident master of their own.
int BenchMesh(Master& master, bool json, const std::function<bool(const std::string&)>& wants);
int BenchIngress(bool json, const std::function<bool(const std::string&)>& wants);
// Runs this program with `args` and GROVE_RUNTIME_DIR=`dir` (stdout on `out_fd` when >= 0);
// its exit status (-1: none within two minutes).
int RunSelfIn(const std::string& dir, std::vector<std::string> args, int out_fd = -1);
// run, tree, call, push and pull in a resident master's tree: the verb's exit status, or
// nullopt when
// the verb runs in a private tree (not one of those verbs, --fresh, or no resident master
// runs and none was asked for with --attach or $GROVE_SOCKET).
std::optional<int> MaybeAttached(const std::string& verb, const std::vector<std::string>& args);
// `args` without --fresh and --attach SOCKET (before "--").
std::vector<std::string> WithoutAttachOptions(const std::vector<std::string>& args);

}  // namespace grove::cli

#endif  // GROVE_TOOLS_CLI_H_
