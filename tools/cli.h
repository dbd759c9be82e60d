// The grove CLI's verbs and the functions the CLI program registers (it replicates itself
// like any grove program).
#ifndef GROVE_TOOLS_CLI_H_
#define GROVE_TOOLS_CLI_H_

#include <string>
#include <vector>

#include "master/master.h"

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

}  // namespace grove::cli

#endif  // GROVE_TOOLS_CLI_H_
