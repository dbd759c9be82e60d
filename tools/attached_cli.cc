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

// A duration in whole seconds, "0s" rather than "0".

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

int AttachedRun(Stub& stub, const std::vector<std::string>& raw_args) {
  std::vector<std::string> paths, argv;
  bool dashes = false, json = false;
  double timeout_s = 0, connect_s = 30;
  std::string inventory;
  for (size_t i = 0; i < raw_args.size(); ++i) {
    const std::string& a = raw_args[i];
    auto number = [&](double* out) {
      if (i + 1 >= raw_args.size() || !ParsePositive(raw_args[i + 1], out)) {
        fprintf(stderr, "grove run: %s needs a number above 0\n", a.c_str());
        return false;
      }
      ++i;
      return true;
    };
    if (dashes) {
      argv.push_back(a);
    } else if (a == "--") {
      dashes = true;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--timeout") {
      if (!number(&timeout_s)) return kExitUsage;
    } else if (a == "--connect-timeout") {
      if (!number(&connect_s)) return kExitUsage;
    } else if (a == "-j") {
      double ignored;  // Every path runs at once in a resident tree.
      if (!number(&ignored)) return kExitUsage;
    } else if (a == "--inventory" && i + 1 < raw_args.size()) {
      inventory = raw_args[++i];
    } else if (a.size() > 1 && a[0] == '-' && a != "-") {
      fprintf(stderr, "grove run: unknown option %s (see grove run --help)\n", a.c_str());
      return kExitUsage;
    } else {
      paths.push_back(a);
    }
  }
  absl::StatusOr<std::vector<std::string>> expanded = ExpandGroups(paths, inventory);
  if (!expanded.ok()) {
    fprintf(stderr, "grove run: %s\n", std::string(expanded.status().message()).c_str());
    return kExitUsage;
  }
  paths = *std::move(expanded);
  if (paths.empty() || argv.empty() || (!dashes && paths.size() > 1)) {
    fprintf(stderr, "grove run: need PATH... -- ARGV... (see grove run --help)\n");
    return kExitUsage;
  }
  // Names first when there are several (the prefixes are padded to one width).
  std::vector<std::string> names(paths.size());
  for (size_t i = 0; i < paths.size(); ++i) names[i] = Redacted(paths[i], paths);
  if (paths.size() > 1) {
    std::vector<std::thread> spawns;
    for (size_t i = 0; i < paths.size(); ++i) {
      spawns.emplace_back([&, i] {
        CliCall call;
        v1::SpawnPathRequest request;
        request.set_path(paths[i]);
        request.set_connect_timeout_ms(static_cast<int64_t>(connect_s * 1000));
        v1::ContextStatus reply;
        if (stub.Spawn(call.get(), request, &reply).ok()) names[i] = reply.name();
      });
    }
    for (std::thread& t : spawns) t.join();
  }
  OutputMux mux(paths.size() > 1, names);
  struct Outcome {
    int status = 0;
    std::string state = "ok", error;
    v1::RunReply reply;
  };
  std::vector<Outcome> outcomes(paths.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < paths.size(); ++i) {
    threads.emplace_back([&, i] {
      CliCall call;
      v1::ControlRunRequest request;
      request.set_path(paths[i]);
      for (const std::string& a : argv) request.mutable_command()->add_argv(a);
      if (timeout_s > 0) request.set_timeout_ms(static_cast<int64_t>(timeout_s * 1000));
      request.set_connect_timeout_ms(static_cast<int64_t>(connect_s * 1000));
      std::unique_ptr<grpc::ClientReader<v1::ControlRunEvent>> reader =
          stub.Run(call.get(), request);
      v1::ControlRunEvent event;
      Outcome& o = outcomes[i];
      while (reader->Read(&event)) {
        switch (event.event_case()) {
          case v1::ControlRunEvent::kStarted:
            names[i] = event.started().name();
            break;
          case v1::ControlRunEvent::kStdout:
            if (json) {
              *o.reply.mutable_stdout() += event.stdout();
            } else {
              mux.Write(names[i], 1, event.stdout());
            }
            break;
          case v1::ControlRunEvent::kStderr:
            if (json) {
              *o.reply.mutable_stderr() += event.stderr();
            } else {
              mux.Write(names[i], 2, event.stderr());
            }
            break;
          case v1::ControlRunEvent::kExit:
            o.reply.set_exit_status(event.exit().exit_status());
            o.reply.set_signal(event.exit().signal());
            break;
          default:
            break;
        }
      }
      grpc::Status status = reader->Finish();
      if (!status.ok()) {
        const bool late = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
        const bool lost = status.error_code() == grpc::StatusCode::UNAVAILABLE;
        o.state = lost ? "unreachable" : late ? "timed out" : "failed";
        o.status = lost ? kExitUnreachable : late ? kExitTimeout : kExitFailed;
        o.error = late ? absl::StrCat("timed out after ", timeout_s, " s")
                       : Redacted(status.error_message(), paths);
        o.reply.set_exit_status(-1);
      } else {
        o.status = o.reply.exit_status();
        o.state = o.status == 0 ? "ok" : "failed";
        if (o.status != 0) o.error = absl::StrCat("exit status ", o.status);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  mux.Flush();
  int ok = 0, failed = 0, unreachable = 0, worst = 0;
  std::string json_out = "[";
  for (size_t i = 0; i < paths.size(); ++i) {
    const Outcome& o = outcomes[i];
    ok += o.state == "ok";
    failed += o.state == "failed" || o.state == "timed out";
    unreachable += o.state == "unreachable";
    worst = std::max(worst, o.status);
    if (json) {
      absl::StrAppend(&json_out, i ? "," : "", "\n{\"context\":", JsonQuote(names[i]),
                      ",\"path\":", JsonQuote(Redacted(paths[i], paths)),
                      ",\"state\":", JsonQuote(o.state), ",\"exit_status\":",
                      o.reply.exit_status(), ",\"stdout\":", JsonQuote(o.reply.stdout()),
                      ",\"stderr\":", JsonQuote(o.reply.stderr()));
      if (!o.error.empty()) absl::StrAppend(&json_out, ",\"error\":", JsonQuote(o.error));
      json_out += "}";
    } else if (!o.error.empty() && !mux.broken()) {
      fprintf(stderr, "grove run: %s: %s: %s\n", Printable(names[i]).c_str(), o.state.c_str(),
              Printable(o.error).c_str());
    }
  }
  if (mux.broken()) return kExitBrokenPipe;
  if (json) {
    printf("%s\n]\n", json_out.c_str());
  } else if (paths.size() > 1 || failed + unreachable > 0) {
    fprintf(stderr, "grove run: %d ok, %d failed, %d unreachable\n", ok, failed, unreachable);
  }
  return worst;
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
  for (size_t i = 0; i < raw_args.size(); ++i) {
    if (raw_args[i] == "--timeout") {
      if (i + 1 >= raw_args.size() || !ParsePositive(raw_args[i + 1], &timeout_s)) {
        fprintf(stderr, "grove call: --timeout needs a number of seconds above 0\n");
        return kExitUsage;
      }
      ++i;
    } else {
      args.push_back(raw_args[i]);
    }
  }
  if (args.size() != 3) {
    fprintf(stderr, "grove call: need [--timeout S] PATH FUNCTION 'JSON'\n");
    return kExitUsage;
  }
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
  int status = verb == "run"    ? AttachedRun((*stub)->stub(), choice.rest)
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
