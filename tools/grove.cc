// grove: the command-line tool. It is itself a grove program: the contexts it starts run
// this same binary.
//
//   grove run PATH... -- ARGV...      run a command in the last hop of each path
//   grove tree [--json] PATH...       start the contexts and print the registry
//   grove push [-r] PATH... -- SRC DEST, grove pull [-r] PATH -- SRC DEST
//   grove call PATH FUNCTION 'JSON'   call a function with a JSON argument
//   grove grpc PATH list | SERVICE/METHOD 'JSON'   the context's gRPC services
//   grove bench [--json] [--only M]   benchmarks
//   grove demo                        the tour that tools/demo runs
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/json.h"
#include "common/printable.h"
#include "common/version.h"
#include "launch/payload.h"
#include "google/protobuf/wrappers.pb.h"
#include "tools/bench_service.h"
#include "tools/cli.h"
#include "tools/output_mux.h"
#include "tools/cli_signals.h"
#include "tools/cli_paths.h"
#include "tools/floors.h"
#include "grove.h"

namespace grove::cli {
namespace {

// The version of grove; the build is named by the SHA-256 of this very program.

constexpr char kPaths[] = R"(
PATHS
  A PATH is a chain of hops separated by '/', each started from the context before it; a hop
  is METHOD[:TARGET][,key=value...]. Several paths may be given; shared prefixes are one
  context. @GROUP stands for the paths of that group in the inventory (--inventory FILE,
  $GROVE_INVENTORY, or ~/.config/grove/inventory: "[group]" lines, then one path per line).

  local                       a child process on this host (this program, re-executed)
  fork                        a child forked from the context's zygote (where available)
  ssh:[USER@]HOST[:PORT]      through the system ssh client; identity=FILE,
                              ssh_option=KEY=VALUE (repeatable), check_host_keys=yes|no|accept,
                              compression=yes|no, password=... or password_env=VAR,
                              connect_timeout=SECONDS
  sudo[:USER]                 through sudo; password=... or password_env=VAR
  su[:USER]                   through su, on a PTY; password=... or password_env=VAR
  command:ARGV                any argv that ends in a shell (docker exec -i C sh, ...)
  Every hop takes name=NAME; remote hops take cache_dir=DIR.
)";

constexpr char kUsage[] = R"(usage: grove VERB ...   (grove VERB --help for more)

  grove run [-j N] [--timeout S] [--json] PATH... -- ARGV...
                                    run ARGV in the last hop of each path, in parallel
  grove tree [--json] PATH...       start the contexts and print the master's registry
  grove call [--timeout S] PATH FUNCTION 'JSON'
                                    call a function with a JSON argument, print the result
  grove grpc PATH list              the gRPC services the context hosts (server reflection)
  grove grpc PATH SERVICE/METHOD 'JSON'
                                    call one of them with a JSON request, print the response
  grove push [-r] [--json] [--timeout S] PATH... -- SRC DEST
                                    copy a local file (a tree with -r) to each context
  grove pull [-r] [--json] [--timeout S] PATH -- SRC DEST
                                    copy SRC from a context to DEST here
  grove bench [--json] [--only METRIC,...] [--ssh HOP]
                                    measure grove on local (and ssh) contexts
  grove demo                        a tour: a tree, calls, a killed subtree, a clean shutdown
  grove --version                   the version and the build's digest

Resident trees (docs/resident.md): while a resident master runs, run, tree, call, push and
pull work in its tree (contexts are started once per path and kept; --fresh: a private tree).
  grove up [SPEC] [--idle-timeout S] start this user's resident master (SPEC: supervised
                                    contexts, proto/spec.proto in text format)
  grove down                        stop it and its whole tree
  grove status [--json]             its pid, uptime, build, socket, and every context
  grove logs [-f] [PATH]            the tree's output and log records
  grove stop PATH                   stop a kept context and its subtree
  grove reload SPEC                 apply a changed spec (start new, stop gone, keep the rest)

Exit status (every verb): 0 success; 1 something failed; 2 bad arguments; 124 --timeout
passed; 130/143 interrupted (SIGINT/SIGTERM: what ran was cancelled and cleaned up); 141
stdout closed; 255 a context could not be reached. grove run exits with its commands' worst
exit status otherwise.

Examples:
  grove run local -- uname -a
  grove up; grove run ssh:web1 -- uptime; grove down
  grove run -j 20 @web -- uptime
  grove tree local/local,name=deep local/local
  grove call local grove.info '{}'
  grove push -r @web -- ./site /srv/
)";

constexpr char kRunHelp[] = R"(usage: grove run [OPTIONS] PATH... -- ARGV...

Starts the contexts on each PATH and runs ARGV in the last hop of each, in parallel. Output
is streamed, each line prefixed with its context's name when there are several (names are
padded to one width and coloured on a terminal). At the end a summary says which contexts
succeeded, failed (non-zero exit, timeout) or were unreachable. The exit status is 0 only
when every context succeeded; otherwise the worst exit status (124: timed out, 255:
unreachable). A command runs in a process group of its own, killed whole on --timeout, on
Ctrl-C and when the command ends. A closed stdout (| head) ends the run (exit status 141).

Options:
  -j N              at most N contexts starting or running at once (N >= 1; default: no
                    limit)
  --timeout S       give each command S seconds, S > 0 (then it is killed: "timed out")
  --connect-timeout S
                    give each hop S seconds to start (default 30)
  --json            no streaming: print a JSON array, one object per context: context, path,
                    state, exit_status, stdout, stderr (JSON strings; bytes that are not
                    UTF-8 as \xNN) and error
  --inventory FILE  where @GROUP paths come from
  --fresh           a private tree for this run, even when a resident master runs
  --attach SOCKET   work in the resident master at SOCKET (also: $GROVE_SOCKET)

While a resident master runs (grove up), the contexts are those of its tree: a PATH that is
already running is reused, a missing one is started and kept (see grove up --help).

Examples:
  grove run local -- uname -a
  grove run ssh:root@web1,identity=~/.ssh/id_ed25519/sudo:nobody -- id -un
  grove run -j 10 --timeout 30 @web -- systemctl is-active nginx
)";

constexpr char kTreeHelp[] = R"(usage: grove tree [--json] PATH...

Starts the contexts on each PATH and prints the master's registry as a tree (or, with
--json, a JSON array of contexts: id, name, parent (null for the master), method, host,
pid, user, state).

Examples:
  grove tree local/local,name=deep local/local
  grove tree --json ssh:web1/sudo:root
)";

constexpr char kCallHelp[] = R"(usage: grove call [--timeout S] PATH FUNCTION 'JSON'

Calls FUNCTION in the last hop of PATH with a JSON argument (the protobuf JSON mapping of
its argument type) and prints the result as JSON. FUNCTION is a built-in (grove.ping,
grove.info, grove.run, ...) or a function this program registers. bytes fields are given and
printed as text ({"base64": "..."} where they are not UTF-8). --timeout S ends the call after S
seconds (exit status 124).

Examples:
  grove call local grove.info '{}'
  grove call ssh:web1 grove.run '{"argv": ["uname", "-r"]}'
)";

constexpr char kPushHelp[] = R"(usage: grove push [OPTIONS] PATH... -- SRC DEST
       grove pull [OPTIONS] PATH -- SRC DEST

push copies SRC (a local file, or with -r a directory tree) to DEST in the last hop of each
PATH; pull copies SRC from the last hop of PATH to DEST here. As with cp, a DEST that is an
existing directory receives the copy under SRC's name. Files are streamed in chunks,
verified by SHA-256, written under a temporary name and renamed; modes, times and symlinks
are kept. Pushing to several contexts sends the bytes once per link. A progress bar is
drawn on a terminal; --json prints a summary (bytes, entries, seconds, and per context its
state: ok, failed or unreachable). A path that cannot be reached does not stop the others.
Ctrl-C cancels the transfer and removes what it had written.

Options:
  -r, --recursive   copy a directory and everything under it
  --json            print the summary as JSON
  --timeout S       the whole transfer ends after S seconds, S > 0 (exit status 124)
  --connect-timeout S
                    give each hop S seconds to start (default 30)
  --inventory FILE  where @GROUP paths come from
  --no-kernel-copy  stream every byte through the links, even on this host

Examples:
  grove push -r @web -- ./site /srv/
  grove pull ssh:web1 -- /var/log/syslog /tmp/web1.syslog
)";

constexpr char kBenchHelp[] = R"(usage: grove bench [--json] [--only METRIC,...] [--ssh HOP]
       grove bench --scale 10,100,1000
       grove bench --list

Measures grove on local contexts (and, with --ssh, over one ssh hop) and prints each metric
with its target and the peers' figures (mitogen, execnet, measured on this project's
machine); --json prints grove's alone, one object per line. --only picks metrics by name;
--list names them all, with their targets.
Beside rtt_us, the same run measures what a round trip cannot go below on this machine:
socketpair_rtt_us (a byte between two processes), grpc_stream_rtt_us and
grpc_callback_rtt_us (an empty message on a raw gRPC stream, from a blocking thread and from
gRPC's callbacks alone). --scale builds trees of that many contexts and reports what each
costs.
)";

constexpr char kGrpcHelp[] = R"(usage: grove grpc PATH list
       grove grpc PATH SERVICE/METHOD 'JSON'

The gRPC services the last hop of PATH hosts (the program's own services, health and server
reflection). list prints them, from server reflection. SERVICE/METHOD calls one with a JSON
request and prints each response as JSON; the method's types come from the context's
reflection. Unary and server-streaming methods.

Examples:
  grove grpc local/local list
  grove grpc local/local grpc.health.v1.Health/Check '{}'
)";

constexpr char kUpHelp[] = R"(usage: grove up [SPEC] [--idle-timeout S] [--program BIN] [--foreground]
       grove down | grove status [--json] | grove logs [-f] [PATH] | grove stop PATH
       grove reload SPEC

grove up starts this user's resident master in the background and returns once it answers:
a grove tree that outlives the command that started it. Its control socket (grove.v1.Control,
proto/control.proto) is $XDG_RUNTIME_DIR/grove/control.sock, or ~/.cache/grove/run/ without
XDG_RUNTIME_DIR ($GROVE_RUNTIME_DIR overrides the directory); only this user can connect. Its
log is master.log beside it (capped at 16 MiB, then master.log.1).

While it runs, grove run, tree, call, push and pull work in its tree: a PATH names a kept
context, started the first time and found again after (ssh:web1/sudo:root is started once);
--fresh gives a private tree instead, --attach SOCKET (or $GROVE_SOCKET) picks another master. Kept contexts
nobody used for --idle-timeout seconds (default 600) are stopped; grove stop PATH stops one.

SPEC declares supervised contexts in protobuf text format (proto/spec.proto):
  context { path: "local,name=web" restart: ALWAYS }
  context { path: "ssh:db1" restart: ON_FAILURE backoff { initial_ms: 200 max_ms: 30000 }
            limit { restarts: 5 window_s: 60 } }
A lost context (killed, crashed, link or host gone) is started again after the backoff; more
than `restarts` restarts within `window_s`, and it stays down with the reason (grove status).
grove reload SPEC applies a changed spec; grove down stops the master and its whole tree.
--program BIN runs another grove program as the resident master (its functions can then be
called with grove call); --foreground runs it in this process (for a service manager).

Exit status of grove status: 0 running, 3 not running.
)";

constexpr char kDemoHelp[] = R"(usage: grove demo

A tour on local contexts: builds a small tree, calls a function in every context, kills a
subtree and shows the master noticing, and shuts down leaving nothing behind.
)";

}  // namespace

int Version() {
  absl::StatusOr<const Payload*> self = ThisProgram();
  printf("grove %s\nbuild %s\n", kGroveVersion,
         self.ok() ? (*self)->sha256.c_str() : "(unknown: cannot read this program)");
  return 0;
}

int Usage(int status) {
  fputs(kUsage, status == 0 ? stdout : stderr);
  if (status == 0) fputs(kPaths, stdout);
  return status;
}

namespace {

// Every verb and its help: what `grove VERB --help`, the man page and the shell completion
// are made from.
struct VerbText {
  const char* verb;
  const char* help;
  bool paths;  // Takes PATHs (the help then ends with kPaths).
};
constexpr VerbText kVerbs[] = {
    {"run", kRunHelp, true},     {"tree", kTreeHelp, true}, {"call", kCallHelp, true},
    {"push", kPushHelp, true},   {"pull", kPushHelp, true}, {"grpc", kGrpcHelp, true},
    {"bench", kBenchHelp, false}, {"demo", kDemoHelp, false},
    {"up", kUpHelp, false},       {"down", kUpHelp, false},  {"status", kUpHelp, false},
    {"logs", kUpHelp, false},     {"stop", kUpHelp, true},   {"reload", kUpHelp, false},
};

// `text` for roff: backslashes doubled, and a line that starts with '.' or '\'' guarded.
std::string Roff(const std::string& text) {
  std::string out;
  bool line_start = true;
  for (char c : text) {
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    if (c == '\\') {
      out += "\\e";
    } else {
      out += c;
    }
    line_start = c == '\n';
  }
  return out;
}

}  // namespace

int VerbHelp(const std::string& verb) {
  for (const VerbText& v : kVerbs) {
    if (verb != v.verb) continue;
    fputs(v.help, stdout);
    if (v.paths) fputs(kPaths, stdout);
    return 0;
  }
  return Usage(0);
}

int Manual() {
  printf(".TH GROVE 1 \"\" \"grove %s\" \"User Commands\"\n", kGroveVersion);
  printf(".SH NAME\ngrove \\- run functions, commands and file transfers across a tree of "
         "contexts\n.SH SYNOPSIS\n.nf\n%s.fi\n", Roff(kUsage).c_str());
  for (const VerbText& v : kVerbs) {
    // With push, and with up.
    if (v.help == kPushHelp && std::string(v.verb) != "push") continue;
    if (v.help == kUpHelp && std::string(v.verb) != "up") continue;
    printf(".SH \"GROVE %s\"\n.nf\n%s.fi\n", absl::AsciiStrToUpper(v.verb).c_str(),
           Roff(v.help).c_str());
  }
  printf(".SH PATHS\n.nf\n%s.fi\n", Roff(kPaths).c_str());
  return 0;
}

int Completion(const std::string& shell) {
  if (shell != "bash") {
    fprintf(stderr, "grove --completion: only bash\n");
    return 2;
  }
  std::string verbs;
  for (const VerbText& v : kVerbs) absl::StrAppend(&verbs, verbs.empty() ? "" : " ", v.verb);
  printf("# bash completion for grove (made by grove --completion bash)\n"
         "_grove() {\n"
         "  local cur=${COMP_WORDS[COMP_CWORD]}\n"
         "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n"
         "    COMPREPLY=($(compgen -W \"%s --help --version\" -- \"$cur\"))\n"
         "    return\n"
         "  fi\n"
         "  case \"$cur\" in\n"
         "    -*) COMPREPLY=($(compgen -W \"$(grove \"${COMP_WORDS[1]}\" --help 2>/dev/null |"
         " grep -oE -- '(^|[ \\[])-(-[a-z-]+|[a-z])' | tr -d ' [' | sort -u)\" -- \"$cur\")) ;;\n"
         "    *) COMPREPLY=($(compgen -f -- \"$cur\")) ;;\n"
         "  esac\n"
         "}\n"
         "complete -F _grove grove\n",
         verbs.c_str());
  return 0;
}


const Functions& CliFunctions() {
  static const Functions* functions = [] {
    auto* f = new Functions();
    // grove.bench.Echo, in every context: grove bench's ingress rows.
    f->AddService(&TheBenchEcho());
    // Receives bytes and says how many (the transfer benchmark).
    f->Register<google::protobuf::BytesValue, google::protobuf::Int64Value>(
        "bench.sink",
        [](const google::protobuf::BytesValue& in,
           CallContext&) -> absl::StatusOr<google::protobuf::Int64Value> {
          google::protobuf::Int64Value out;
          out.set_value(static_cast<int64_t>(in.value().size()));
          return out;
        });
    // Starts a child of the context it runs in, from code running there (the demo).
    f->Register<google::protobuf::StringValue, google::protobuf::UInt64Value>(
        "demo.spawn_here",
        [](const google::protobuf::StringValue& hop,
           CallContext& call) -> absl::StatusOr<google::protobuf::UInt64Value> {
          absl::StatusOr<Hop> parsed = ParseHop(hop.value());
          if (!parsed.ok()) return parsed.status();
          absl::StatusOr<v1::ContextInfo> info =
              call.router().SpawnChild(*parsed, call.deadline());
          if (!info.ok()) return info.status();
          google::protobuf::UInt64Value out;
          out.set_value(info->id());
          return out;
        });
    // Says where it runs (the demo's "function across all of them").
    f->Register<google::protobuf::StringValue, google::protobuf::StringValue>(
        "demo.where",
        [](const google::protobuf::StringValue& in,
           CallContext& call) -> absl::StatusOr<google::protobuf::StringValue> {
          google::protobuf::StringValue out;
          out.set_value(absl::StrCat(in.value(), " from ", call.router().name(), " (pid ",
                                     getpid(), ", parent id ", call.router().self().parent(),
                                     ")"));
          return out;
        });
    return f;
  }();
  return *functions;
}

void PrintTree(Master& master, bool json, bool include_gone) {
  PrintRecords(RecordFromInfo(master.router().self()), master.registry().List(include_gone),
               json);
}

void PrintRecords(const ContextRecord& self, const std::vector<ContextRecord>& records,
                  bool json) {
  if (json) {
    std::vector<std::string> items;
    const ContextId master_id = self.id;
    auto item = [master_id](const ContextRecord& r) {
      return absl::StrCat(
          "{\"id\":", r.id.value(), ",\"name\":", JsonQuote(r.name), ",\"parent\":",
          r.id == master_id ? "null" : absl::StrCat(r.parent.value()),
          ",\"method\":", JsonQuote(r.method), ",\"host\":", JsonQuote(r.host),
          ",\"pid\":", r.pid, ",\"user\":", JsonQuote(r.user),
          ",\"state\":", JsonQuote(ContextStateName(r.state)), "}");
    };
    items.push_back(item(self));
    for (const ContextRecord& r : records) items.push_back(item(r));
    printf("[%s]\n", absl::StrJoin(items, ",").c_str());
    return;
  }
  std::map<uint64_t, std::vector<const ContextRecord*>> children;
  for (const ContextRecord& r : records) children[r.parent.value()].push_back(&r);
  printf("%s  id=0 method=master host=%s pid=%lld\n", self.name.c_str(), self.host.c_str(),
         static_cast<long long>(self.pid));
  std::function<void(uint64_t, const std::string&)> walk = [&](uint64_t parent,
                                                                const std::string& indent) {
    const auto& kids = children[parent];
    for (size_t i = 0; i < kids.size(); ++i) {
      const ContextRecord& r = *kids[i];
      bool last = i + 1 == kids.size();
      // What children report about themselves is made Printable.
      printf("%s%s %s  id=%llu parent=%llu method=%s host=%s pid=%lld %s%s\n", indent.c_str(),
             last ? "└─" : "├─", Printable(r.name).c_str(),
             static_cast<unsigned long long>(r.id.value()),
             static_cast<unsigned long long>(r.parent.value()), Printable(r.method).c_str(),
             Printable(r.host).c_str(), static_cast<long long>(r.pid), ContextStateName(r.state),
             r.state == ContextState::kGone ? absl::StrCat(" (", Printable(r.reason), ")").c_str()
                                            : "");
      walk(r.id.value(), indent + (last ? "   " : "│  "));
    }
  };
  walk(0, "");
}

bool ParseRunArgs(const std::vector<std::string>& raw_args, RunArgs* out) {
  std::vector<std::string>& paths = out->paths;
  bool dashes = false;
  for (size_t i = 0; i < raw_args.size(); ++i) {
    const std::string& a = raw_args[i];
    auto number = [&](double* value) {
      if (i + 1 >= raw_args.size() || !ParsePositive(raw_args[i + 1], value)) {
        fprintf(stderr, "grove run: %s needs a number above 0\n", a.c_str());
        return false;
      }
      ++i;
      return true;
    };
    if (dashes) {
      out->argv.push_back(a);
    } else if (a == "--") {
      dashes = true;
    } else if (a == "--json") {
      out->json = true;
    } else if (a == "-j") {
      double j;
      if (!number(&j)) return false;
      out->jobs = static_cast<int>(j);
    } else if (a == "--timeout") {
      if (!number(&out->timeout_s)) return false;
    } else if (a == "--connect-timeout") {
      if (!number(&out->connect_s)) return false;
    } else if (a == "--inventory" && i + 1 < raw_args.size()) {
      out->inventory = raw_args[++i];
    } else if (a.size() > 1 && a[0] == '-' && a != "-") {
      fprintf(stderr, "grove run: unknown option %s (%s; see grove run --help)\n", a.c_str(),
              paths.size() > 1 ? "is '--' missing before the command?" : "grove run's options");
      return false;
    } else {
      paths.push_back(a);
    }
  }
  absl::StatusOr<std::vector<std::string>> expanded = ExpandGroups(paths, out->inventory);
  if (!expanded.ok()) {
    fprintf(stderr, "grove run: %s\n", std::string(expanded.status().message()).c_str());
    return false;
  }
  paths = *std::move(expanded);
  if (!dashes && paths.size() > 1) {
    fprintf(stderr, "grove run: no '--' before the command (grove run PATH... -- ARGV...; "
            "see grove run --help)\n");
    return false;
  }
  if (paths.empty() || out->argv.empty()) {
    fprintf(stderr, "grove run: need PATH... -- ARGV... (see grove run --help)\n");
    return false;
  }
  return true;
}

int Run(Master& master, const std::vector<std::string>& raw_args) {
  RunArgs args;
  if (!ParseRunArgs(raw_args, &args)) return kExitUsage;
  const std::vector<std::string>& paths = args.paths;
  const std::vector<std::string>& argv = args.argv;
  const bool json = args.json;
  const int jobs = args.jobs;
  const double timeout_s = args.timeout_s;
  const double connect_s = args.connect_s;
  std::vector<absl::StatusOr<Context>> contexts =
      StartEach(master, paths, absl::Seconds(connect_s), jobs);
  std::vector<std::string> names(paths.size());
  std::vector<uint64_t> ids(paths.size(), 0);
  for (size_t i = 0; i < paths.size(); ++i) {
    names[i] = contexts[i].ok() ? contexts[i]->name() : Redacted(paths[i], paths);
    if (contexts[i].ok()) ids[i] = contexts[i]->id().value();
  }
  names = DistinctLabels(std::move(names), ids);
  std::vector<std::string> live_names;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (contexts[i].ok()) live_names.push_back(names[i]);
  }
  OutputMux mux(paths.size() > 1, live_names);
  v1::RunRequest request;
  for (const std::string& a : argv) request.add_argv(a);
  request.set_output(json ? v1::RunRequest::CAPTURE : v1::RunRequest::STREAM);
  std::vector<RunOutcome> outcomes(paths.size());
  std::vector<std::thread> threads;
  std::mutex job_mu;
  std::condition_variable job_cv;
  int running = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (!contexts[i].ok()) {
      outcomes[i] = {kExitUnreachable, "unreachable",
                     Redacted(std::string(contexts[i].status().message()), paths)};
      continue;
    }
    threads.emplace_back([&, i] {
      {
        std::unique_lock<std::mutex> lock(job_mu);
        job_cv.wait(lock, [&] { return jobs <= 0 || running < jobs; });
        ++running;
      }
      const Context& c = *contexts[i];
      CallOptions options;
      if (timeout_s > 0) options.timeout = absl::Seconds(timeout_s);
      options.cancel = &CliCancel();
      if (!json) {
        options.on_output = [&mux, name = names[i]](int stream, const std::string& data) {
          mux.Write(name, stream, data);
        };
      }
      outcomes[i] = OutcomeOf(c.Run(request, options), timeout_s, paths);
      {
        std::lock_guard<std::mutex> lock(job_mu);
        --running;
      }
      job_cv.notify_all();
    });
  }
  for (std::thread& t : threads) t.join();
  mux.Flush();
  return ReportRuns(outcomes, names, paths, json, mux);
}

int Tree(Master& master, const std::vector<std::string>& args) {
  bool json = false;
  std::vector<std::string> paths;
  for (const std::string& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "--help" || a == "-h") {
      return Usage(0);
    } else {
      paths.push_back(a);
    }
  }
  if (!paths.empty()) {
    absl::StatusOr<std::vector<Context>> contexts = StartPaths(master, paths, absl::Seconds(30));
    if (!contexts.ok()) {
      fprintf(stderr, "grove tree: %s\n",
              Printable(Redacted(std::string(contexts.status().message()), paths)).c_str());
      return 255;
    }
  }
  PrintTree(master, json, false);
  return 0;
}

}  // namespace grove::cli

namespace {

// Runs `verb` of the CLI in `master`'s tree.
int RunVerb(grove::Master& master, const std::string& verb, const std::vector<std::string>& args) {
  using namespace grove;
  if (verb == "run") return cli::Run(master, args);
  if (verb == "tree") return cli::Tree(master, args);
  if (verb == "bench") return cli::Bench(master, args);
  if (verb == "demo") return cli::Demo(master, args);
  if (verb == "push") return cli::Push(master, args);
  if (verb == "pull") return cli::Pull(master, args);
  if (verb == "call") return cli::Call(master, args);
  if (verb == "grpc") return cli::Grpc(master, args);
  fprintf(stderr, "grove: unknown verb '%s'\n", verb.c_str());
  return cli::Usage(2);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace grove;
  const Functions& functions = cli::CliFunctions();
  if (IsAgentInvocation(argc, argv)) RunAgent(argc, argv, functions);
  if (argc < 2) return cli::Usage(2);
  // grove bench's floors, each measured by a process of its own.
  if (std::optional<int> status = cli::RunFloorProcess(argc, argv)) return *status;
  std::string verb = argv[1];
  if (verb == "--help" || verb == "-h" || verb == "help") return cli::Usage(0);
  if (verb == "--version" || verb == "version") return cli::Version();
  if (verb == "--man") return cli::Manual();
  if (verb == "--completion") return cli::Completion(argc > 2 ? argv[2] : "");
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const std::string& a : args) {
    if (a == "--") break;
    if (a == "--help" || a == "-h") return cli::VerbHelp(verb);
  }
  // The resident master's verbs need no tree of their own.
  if (verb == "up") return cli::Up(args);
  if (verb == "down") return cli::Down(args);
  if (verb == "status") return cli::Status(args);
  if (verb == "logs") return cli::Logs(args);
  if (verb == "stop") return cli::StopPath(args);
  if (verb == "reload") return cli::Reload(args);
  // In a resident master's tree, when one runs (and --fresh is not given).
  if (std::optional<int> status = cli::MaybeAttached(verb, args)) return *status;
  args = cli::WithoutAttachOptions(args);
  MasterOptions options;
  options.name = "master";
  return Main(argc, argv, functions, [&](Master& master) {
    cli::HandleInterrupts();
    int status = RunVerb(master, verb, args);
    // Interrupted: the verb cancelled what it did; the tree goes down as Main returns.
    if (int sig = cli::InterruptSignal(); sig != 0) return 128 + sig;
    return status;
  }, options);
}
