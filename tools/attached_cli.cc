// run, tree and call in a resident master's tree (grove.v1.Control): what MaybeAttached
// serves when a resident master runs. push and pull: files_cli.cc (AttachedTransfer).
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/json.h"
#include "common/printable.h"
#include "common/status_util.h"
#include "proto/control.grpc.pb.h"
#include "resident/attach.h"
#include "resident/control_service.h"
#include "resident/control_socket.h"
#include "resident/resident.h"
#include "resident/supervisor.h"
#include "tools/cli.h"
#include "tools/cli_paths.h"
#include "tools/cli_signals.h"
#include "tools/output_mux.h"

#include "tools/cli_attach.h"

namespace grove::cli {
namespace {

ContextRecord RecordOf(const v1::ContextStatus& s) {
  ContextRecord r;
  r.id = ContextId(s.id());
  r.name = s.name();
  r.parent = ContextId(s.parent());
  r.method = s.method();
  r.host = s.host();
  r.pid = s.pid();
  r.user = s.user();
  r.state = s.state() == "gone" ? ContextState::kGone : ContextState::kConnected;
  r.reason = s.reason();
  return r;
}

struct AttachChoice {
  bool fresh = false;
  std::string socket;  // --attach
  std::vector<std::string> rest;
};

AttachChoice ChooseAttach(const std::vector<std::string>& args) {
  AttachChoice choice;
  bool dashes = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!dashes && args[i] == "--fresh") {
      choice.fresh = true;
    } else if (!dashes && args[i] == "--attach" && i + 1 < args.size()) {
      choice.socket = args[++i];
    } else {
      if (args[i] == "--") dashes = true;
      choice.rest.push_back(args[i]);
    }
  }
  return choice;
}

int AttachedRun(AttachedTree& tree, const std::vector<std::string>& raw_args) {
  RunArgs args;
  if (!ParseRunArgs(raw_args, &args)) return kExitUsage;
  const std::vector<std::string>& paths = args.paths;
  // Names first when there are several (the prefixes are padded to one width).
  std::vector<std::string> names(paths.size());
  std::vector<uint64_t> ids(paths.size(), 0);
  for (size_t i = 0; i < paths.size(); ++i) names[i] = Redacted(paths[i], paths);
  const absl::Duration connect = absl::Seconds(args.connect_s);
  if (paths.size() > 1) {
    std::vector<std::thread> spawns;
    for (size_t i = 0; i < paths.size(); ++i) {
      spawns.emplace_back([&, i] {
        absl::StatusOr<v1::ContextStatus> c = tree.Spawn(paths[i], connect);
        if (c.ok()) {
          names[i] = c->name();
          ids[i] = c->id();
        }
      });
    }
    for (std::thread& t : spawns) t.join();
    names = DistinctLabels(std::move(names), ids);
  }
  OutputMux mux(paths.size() > 1, names);
  v1::RunRequest command;
  for (const std::string& a : args.argv) command.add_argv(a);
  std::vector<RunOutcome> outcomes(paths.size());
  std::vector<std::thread> threads;
  // Every path runs at once in a resident tree (-j limits starts of a private tree).
  for (size_t i = 0; i < paths.size(); ++i) {
    threads.emplace_back([&, i] {
      CallOptions options;
      options.cancel = &CliCancel();
      if (args.timeout_s > 0) options.timeout = absl::Seconds(args.timeout_s);
      if (!args.json) {
        options.on_output = [&mux, &names, i](int stream, const std::string& data) {
          mux.Write(names[i], stream, data);
        };
      }
      v1::ContextStatus started;
      absl::StatusOr<v1::RunReply> reply = tree.Run(paths[i], command, options, &started, connect);
      if (!started.name().empty()) names[i] = started.name();
      outcomes[i] = OutcomeOf(std::move(reply), args.timeout_s, paths);
    });
  }
  for (std::thread& t : threads) t.join();
  mux.Flush();
  return ReportRuns(outcomes, names, paths, args.json, mux);
}

int TreeAttached(Stub& stub, const std::vector<std::string>& args) {
  bool json = false;
  std::vector<std::string> paths;
  for (const std::string& a : args) {
    if (a == "--json") {
      json = true;
    } else {
      paths.push_back(a);
    }
  }
  for (const std::string& path : paths) {
    CliCall call;
    v1::SpawnPathRequest request;
    request.set_path(path);
    v1::ContextStatus reply;
    grpc::Status status = stub.Spawn(call.get(), request, &reply);
    if (!status.ok()) {
      fprintf(stderr, "grove tree: %s\n", Redacted(Message(status), paths).c_str());
      return ExitFor(status.error_code());
    }
  }
  CliCall call;
  v1::ListContextsReply list;
  grpc::Status status = stub.ListContexts(call.get(), v1::ListContextsRequest(), &list);
  if (!status.ok() || list.contexts_size() == 0) {
    fprintf(stderr, "grove tree: %s\n", Message(status).c_str());
    return ExitFor(status.error_code());
  }
  std::vector<ContextRecord> records;
  for (int i = 1; i < list.contexts_size(); ++i) records.push_back(RecordOf(list.contexts(i)));
  PrintRecords(RecordOf(list.contexts(0)), records, json);
  return 0;
}

int AttachedCall(Stub& stub, const std::vector<std::string>& raw_args) {
  std::vector<std::string> args;
  double timeout_s = 0;
  if (!ParseCallArgs(raw_args, &args, &timeout_s)) return kExitUsage;
  CliCall call;
  v1::ControlCallRequest request;
  request.set_path(args[0]);
  request.set_function(args[1]);
  request.set_json(args[2]);
  if (timeout_s > 0) request.set_timeout_ms(static_cast<int64_t>(timeout_s * 1000));
  v1::ControlCallReply reply;
  grpc::Status status = stub.Call(call.get(), request, &reply);
  if (!status.ok()) {
    fprintf(stderr, "grove call: %s\n", Redacted(Message(status), {args[0]}).c_str());
    return ExitFor(status.error_code());
  }
  printf("%s\n", reply.json().c_str());
  return 0;
}

}  // namespace

std::optional<int> MaybeAttached(const std::string& verb, const std::vector<std::string>& args) {
  if (verb != "run" && verb != "tree" && verb != "call" && verb != "push" && verb != "pull") {
    return std::nullopt;
  }
  AttachChoice choice = ChooseAttach(args);
  if (choice.fresh) return std::nullopt;
  const bool chosen = !choice.socket.empty() || getenv("GROVE_SOCKET") != nullptr;
  const std::string socket = choice.socket.empty() ? DefaultControlSocket() : choice.socket;
  v1::VersionReply version;
  absl::StatusOr<std::unique_ptr<AttachedTree>> stub = Open(socket, &version);
  if (!stub.ok()) {
    // No resident master: a private tree, as --fresh, unless one was asked for.
    const bool none = stub.status().code() == absl::StatusCode::kUnavailable;
    if (none && !chosen) return std::nullopt;
    fprintf(stderr, "grove %s: %s\n", verb.c_str(), std::string(stub.status().message()).c_str());
    return none ? kExitUnreachable : kExitUsage;
  }
  HandleInterrupts();
  int status = verb == "run"    ? AttachedRun(**stub, choice.rest)
               : verb == "tree" ? TreeAttached((*stub)->stub(), choice.rest)
               : verb == "call" ? AttachedCall((*stub)->stub(), choice.rest)
                                : AttachedTransfer((*stub)->stub(), verb.c_str(), choice.rest);
  if (int sig = InterruptSignal(); sig != 0) return 128 + sig;
  return status;
}

std::vector<std::string> WithoutAttachOptions(const std::vector<std::string>& args) {
  return ChooseAttach(args).rest;
}

}  // namespace grove::cli
