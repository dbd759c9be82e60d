// grove: the command-line tool. It is itself a grove program: the contexts it starts run
// this same binary.
//
//   grove run PATH... -- ARGV...      run a command in the last hop of each path
//   grove tree [--json] PATH...       start the contexts and print the registry
//   grove push [-r] PATH... -- SRC DEST, grove pull [-r] PATH -- SRC DEST
//   grove call PATH FUNCTION 'JSON'   call a function with a JSON argument
//   grove bench [--json] [--only M]   benchmarks
//   grove demo                        the tour that tools/demo runs
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/wrappers.pb.h"
#include "tools/cli.h"
#include "tools/cli_paths.h"
#include "grove.h"

namespace grove::cli {
namespace {

constexpr char kUsage[] = R"(usage: grove VERB ...

  grove run PATH... -- ARGV...      start the contexts and run ARGV in the last hop of each
                                    path (in parallel); output is prefixed with the context
                                    name when there are several; exits with the worst status
  grove tree [--json] PATH...       start the contexts and print the master's registry
  grove push [-r] [--json] PATH... -- SRC DEST
                                    copy a local file (a directory tree with -r) to DEST in
                                    the last hop of each path; bytes cross each link once
  grove pull [-r] [--json] PATH -- SRC DEST
                                    copy SRC from the last hop of PATH to DEST here
  grove call PATH FUNCTION 'JSON'   call a function (a built-in such as grove.info, or one
                                    this program registers) with a JSON argument (protobuf
                                    JSON mapping); prints the JSON result
  grove bench [--json] [--only METRIC,...]
                                    measure grove on local contexts
  grove demo                        a tour: a tree, calls, a killed subtree, a clean shutdown

A PATH is a chain of hops separated by '/'; a hop is METHOD[:TARGET][,key=value...].
Methods: local (a child process on this host). Options: name=NAME.
Several paths may be given; shared prefixes are one context.

Examples:
  grove run local -- uname -a
  grove run local,name=a local,name=b -- sh -c 'echo $$'
  grove tree local/local,name=deep local/local
  grove push -r local,name=a local,name=b -- ./site /srv/
  grove pull ssh:web1 -- /var/log/syslog /tmp/web1.syslog
  grove call local grove.info '{}'
)";

int Usage(int status) {
  fputs(kUsage, status == 0 ? stdout : stderr);
  return status;
}

// Writes streamed output, prefixed with the context name when `prefix` is set, whole lines
// at a time so that contexts do not interleave within a line. Thread-safe.
class OutputMux {
 public:
  explicit OutputMux(bool prefix) : prefix_(prefix) {}
  void Write(const std::string& context, int stream, const std::string& data) {
    std::lock_guard<std::mutex> lock(mu_);
    FILE* f = stream == 2 ? stderr : stdout;
    if (!prefix_) {
      fwrite(data.data(), 1, data.size(), f);
      fflush(f);
      return;
    }
    std::string& partial = partial_[{context, stream}];
    partial += data;
    size_t start = 0;
    for (size_t nl; (nl = partial.find('\n', start)) != std::string::npos; start = nl + 1) {
      fprintf(f, "[%s] %.*s\n", context.c_str(), static_cast<int>(nl - start),
              partial.data() + start);
    }
    partial.erase(0, start);
    fflush(f);
  }
  void Flush() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, partial] : partial_) {
      if (!partial.empty()) {
        fprintf(key.second == 2 ? stderr : stdout, "[%s] %s\n", key.first.c_str(),
                partial.c_str());
      }
    }
    partial_.clear();
  }

 private:
  const bool prefix_;
  std::mutex mu_;
  std::map<std::pair<std::string, int>, std::string> partial_;
};

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

const Functions& CliFunctions() {
  static const Functions* functions = [] {
    auto* f = new Functions();
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
  std::vector<ContextRecord> records = master.registry().List(include_gone);
  if (json) {
    std::vector<std::string> items;
    auto item = [](const ContextRecord& r) {
      return absl::StrCat("{\"id\":", r.id.value(), ",\"name\":", JsonString(r.name),
                          ",\"parent\":", r.parent.value(), ",\"method\":", JsonString(r.method),
                          ",\"host\":", JsonString(r.host), ",\"pid\":", r.pid,
                          ",\"state\":", JsonString(ContextStateName(r.state)), "}");
    };
    ContextRecord self = RecordFromInfo(master.router().self());
    items.push_back(item(self));
    for (const ContextRecord& r : records) items.push_back(item(r));
    printf("[%s]\n", absl::StrJoin(items, ",").c_str());
    return;
  }
  std::map<uint64_t, std::vector<const ContextRecord*>> children;
  for (const ContextRecord& r : records) children[r.parent.value()].push_back(&r);
  const v1::ContextInfo& self = master.router().self();
  printf("%s  id=0 method=master host=%s pid=%lld\n", self.name().c_str(), self.host().c_str(),
         static_cast<long long>(self.pid()));
  std::function<void(uint64_t, const std::string&)> walk = [&](uint64_t parent,
                                                                const std::string& indent) {
    const auto& kids = children[parent];
    for (size_t i = 0; i < kids.size(); ++i) {
      const ContextRecord& r = *kids[i];
      bool last = i + 1 == kids.size();
      printf("%s%s %s  id=%llu parent=%llu method=%s host=%s pid=%lld %s%s\n", indent.c_str(),
             last ? "└─" : "├─", r.name.c_str(), static_cast<unsigned long long>(r.id.value()),
             static_cast<unsigned long long>(r.parent.value()), r.method.c_str(), r.host.c_str(), static_cast<long long>(r.pid),
             ContextStateName(r.state),
             r.state == ContextState::kGone ? absl::StrCat(" (", r.reason, ")").c_str() : "");
      walk(r.id.value(), indent + (last ? "   " : "│  "));
    }
  };
  walk(0, "");
}

int Run(Master& master, const std::vector<std::string>& args) {
  std::vector<std::string> paths, argv;
  bool dashes = false;
  for (const std::string& a : args) {
    if (!dashes && a == "--") {
      dashes = true;
    } else if (dashes) {
      argv.push_back(a);
    } else if (a == "--help" || a == "-h") {
      return Usage(0);
    } else {
      paths.push_back(a);
    }
  }
  if (paths.empty() || argv.empty()) {
    fprintf(stderr, "grove run: need PATH... -- ARGV...\n");
    return 2;
  }
  absl::StatusOr<std::vector<Context>> contexts =
      StartPaths(master, paths, absl::Seconds(30));
  if (!contexts.ok()) {
    fprintf(stderr, "grove run: %s\n", std::string(contexts.status().message()).c_str());
    return 255;
  }
  OutputMux mux(contexts->size() > 1);
  v1::RunRequest request;
  for (const std::string& a : argv) request.add_argv(a);
  request.set_output(v1::RunRequest::STREAM);
  std::vector<int> status(contexts->size(), 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < contexts->size(); ++i) {
    threads.emplace_back([&, i] {
      const Context& c = (*contexts)[i];
      CallOptions options;
      options.on_output = [&mux, name = c.name()](int stream, const std::string& data) {
        mux.Write(name, stream, data);
      };
      absl::StatusOr<v1::RunReply> reply = c.Run(request, options);
      if (!reply.ok()) {
        fprintf(stderr, "grove run: %s: %s\n", c.name().c_str(),
                std::string(reply.status().message()).c_str());
        status[i] = 255;
      } else {
        status[i] = reply->exit_status();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  mux.Flush();
  return *std::max_element(status.begin(), status.end());
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
      fprintf(stderr, "grove tree: %s\n", std::string(contexts.status().message()).c_str());
      return 255;
    }
  }
  PrintTree(master, json, false);
  return 0;
}

}  // namespace grove::cli

int main(int argc, char** argv) {
  using namespace grove;
  const Functions& functions = cli::CliFunctions();
  if (IsAgentInvocation(argc, argv)) RunAgent(argc, argv, functions);
  if (argc < 2) return cli::Usage(2);
  std::string verb = argv[1];
  if (verb == "--help" || verb == "-h" || verb == "help") return cli::Usage(0);
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") return cli::Usage(0);
  }
  MasterOptions options;
  options.name = "master";
  return Main(argc, argv, functions, [&](Master& master) {
    if (verb == "run") return cli::Run(master, args);
    if (verb == "tree") return cli::Tree(master, args);
    if (verb == "bench") return cli::Bench(master, args);
    if (verb == "demo") return cli::Demo(master, args);
    if (verb == "push") return cli::Push(master, args);
    if (verb == "pull") return cli::Pull(master, args);
    if (verb == "call") return cli::Call(master, args);
    fprintf(stderr, "grove: unknown verb '%s'\n", verb.c_str());
    return cli::Usage(2);
  }, options);
}
