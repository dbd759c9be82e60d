// grove push / grove pull / grove call.
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <functional>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/json.h"
#include "common/printable.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "files/files.h"
#include "grove.h"
#include "tools/cli.h"
#include "tools/cli_paths.h"
#include "tools/cli_signals.h"
#include "common/json_bridge.h"
#include "common/status_util.h"
#include "proto/control.grpc.pb.h"

namespace grove::cli {
namespace {


std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrFormat(u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
}

// A one-line progress bar on stderr (bytes, rate, ETA), redrawn at most 10 times a second;
// nothing when stderr is not a terminal. Thread-safe.
class Progress {
 public:
  Progress() : enabled_(::isatty(2) != 0), start_(absl::Now()) {}
  void Update(int64_t done, int64_t total) {
    if (!enabled_) return;
    std::lock_guard<std::mutex> lock(mu_);
    absl::Time now = absl::Now();
    if (done < total && now - last_ < absl::Milliseconds(100)) return;
    last_ = now;
    double seconds = std::max(1e-3, absl::ToDoubleSeconds(now - start_));
    double rate = static_cast<double>(done) / seconds;
    double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0;
    int width = 30;
    int filled = total > 0 ? static_cast<int>(width * static_cast<double>(done) / total) : width;
    fprintf(stderr, "\r[%s%s] %s / %s  %s/s  ETA %.0fs ", std::string(filled, '#').c_str(),
            std::string(width - filled, ' ').c_str(), Human(done).c_str(),
            Human(total).c_str(), Human(rate).c_str(), eta);
    drawn_ = true;
  }
  void End() {
    std::lock_guard<std::mutex> lock(mu_);
    if (drawn_) fputs("\n", stderr);
  }

 private:
  const bool enabled_;
  const absl::Time start_;
  std::mutex mu_;
  absl::Time last_ = absl::InfinitePast();
  bool drawn_ = false;
};

struct FileArgs {
  bool recursive = false;
  bool json = false;
  bool kernel_copy = true;
  double timeout_s = 0;  // 0: none.
  double connect_s = 30;
  std::string inventory;
  std::vector<std::string> paths;
  std::string src, dest;
};

// [-r] [--json] [--timeout S] [--connect-timeout S] [--inventory FILE] [--no-kernel-copy]
// PATH... -- SRC DEST, with @GROUPs expanded.
bool ParseFileArgs(const char* verb, const std::vector<std::string>& args, FileArgs* out) {
  std::vector<std::string> after;
  bool dashes = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto seconds = [&](double* value) {
      if (i + 1 >= args.size() || !ParsePositive(args[i + 1], value)) {
        fprintf(stderr, "grove %s: %s needs a number of seconds above 0\n", verb, a.c_str());
        return false;
      }
      ++i;
      return true;
    };
    if (!dashes && a == "--") {
      dashes = true;
    } else if (dashes) {
      after.push_back(a);
    } else if (a == "-r" || a == "--recursive") {
      out->recursive = true;
    } else if (a == "--json") {
      out->json = true;
    } else if (a == "--no-kernel-copy") {
      out->kernel_copy = false;
    } else if (a == "--timeout") {
      if (!seconds(&out->timeout_s)) return false;
    } else if (a == "--connect-timeout") {
      if (!seconds(&out->connect_s)) return false;
    } else if (a == "--inventory" && i + 1 < args.size()) {
      out->inventory = args[++i];
    } else if (a.size() > 1 && a[0] == '-') {
      fprintf(stderr, "grove %s: unknown option %s (see grove %s --help)\n", verb, a.c_str(),
              verb);
      return false;
    } else {
      out->paths.push_back(a);
    }
  }
  absl::StatusOr<std::vector<std::string>> expanded = ExpandGroups(out->paths, out->inventory);
  if (!expanded.ok()) {
    fprintf(stderr, "grove %s: %s\n", verb, Printable(expanded.status().message()).c_str());
    return false;
  }
  out->paths = *std::move(expanded);
  if (out->paths.empty() || after.size() != 2) {
    fprintf(stderr, "grove %s: need [options] PATH... -- SRC DEST (see grove %s --help)\n", verb,
            verb);
    return false;
  }
  out->src = after[0];
  out->dest = after[1];
  return true;
}

// The transfer's options from the command line: its deadline, and cancelled by Ctrl-C.
TransferOptions OptionsOf(const FileArgs& args, Progress* progress) {
  TransferOptions options;
  options.recursive = args.recursive;
  options.kernel_copy = args.kernel_copy;
  options.progress = [progress](int64_t done, int64_t total) { progress->Update(done, total); };
  options.call.cancel = &CliCancel();
  if (args.timeout_s > 0) options.call.deadline = absl::Now() + absl::Seconds(args.timeout_s);
  return options;
}

// A context that could not be started: its path (secrets hidden) and why.
struct Unreachable {
  std::string path;
  absl::Status status;
};

// `name_of` names a target's context by the id in its result.
int Report(const char* verb, const std::function<std::string(ContextId)>& name_of,
           const FileArgs& args, const TransferSummary& summary,
           const std::vector<Unreachable>& unreachable, absl::Duration took) {
  int failed = 0, late = 0;
  for (const TargetResult& r : summary.results) {
    failed += r.status.ok() ? 0 : 1;
    late += r.status.code() == absl::StatusCode::kDeadlineExceeded ? 1 : 0;
  }
  if (args.json) {
    std::string out = absl::StrFormat(
        "{\"verb\":\"%s\",\"bytes\":%d,\"entries\":%d,\"seconds\":%.3f,\"results\":[", verb,
        summary.bytes, summary.entries, absl::ToDoubleSeconds(took));
    for (size_t i = 0; i < summary.results.size(); ++i) {
      const TargetResult& r = summary.results[i];
      absl::StrAppend(&out, i ? "," : "", "{\"context\":", JsonQuote(name_of(r.id)),
                      ",\"state\":\"", r.status.ok() ? "ok" : "failed", "\"");
      if (!r.status.ok()) {
        absl::StrAppend(&out, ",\"code\":", JsonQuote(absl::StatusCodeToString(r.status.code())),
                        ",\"error\":",
                        JsonQuote(Redacted(std::string(r.status.message()), args.paths)));
      }
      out += "}";
    }
    for (size_t i = 0; i < unreachable.size(); ++i) {
      const Unreachable& u = unreachable[i];
      absl::StrAppend(&out, summary.results.empty() && i == 0 ? "" : ",",
                      "{\"path\":", JsonQuote(u.path), ",\"state\":\"unreachable\",\"code\":",
                      JsonQuote(absl::StatusCodeToString(u.status.code())), ",\"error\":",
                      JsonQuote(Redacted(std::string(u.status.message()), args.paths)), "}");
    }
    out += "]}\n";
    fputs(out.c_str(), stdout);
  } else {
    // A pull's one result is its source's; the error may be about this side (the
    // destination), which it names itself.
    const char* side = std::string(verb) == "pull" ? "from " : "";
    for (const TargetResult& r : summary.results) {
      if (r.status.ok()) continue;
      fprintf(stderr, "grove %s: %s%s: %s\n", verb, side, Printable(name_of(r.id)).c_str(),
              Printable(Redacted(std::string(r.status.message()), args.paths)).c_str());
    }
    for (const Unreachable& u : unreachable) {
      fprintf(stderr, "grove %s: %s: unreachable: %s\n", verb, Printable(u.path).c_str(),
              Printable(Redacted(std::string(u.status.message()), args.paths)).c_str());
    }
  }
  if (!unreachable.empty()) return kExitUnreachable;
  if (late > 0) return kExitTimeout;
  return failed == 0 ? 0 : kExitFailed;
}

std::function<std::string(ContextId)> RegistryNames(Master& master) {
  return [&master](ContextId id) {
    std::optional<ContextRecord> record = master.registry().Find(id);
    return record ? record->name : std::string("?");
  };
}

// A path as the resident master must see it: absolute (it does not share our directory).
std::string AbsolutePath(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  return getcwd(cwd, sizeof(cwd)) != nullptr ? absl::StrCat(cwd, "/", path) : path;
}

// Starts every path's context; the reachable ones in `contexts`, the others in `unreachable`.
void StartTargets(Master& master, const FileArgs& args, std::vector<Context>* contexts,
                  std::vector<Unreachable>* unreachable) {
  std::vector<absl::StatusOr<Context>> started =
      StartEach(master, args.paths, absl::Seconds(args.connect_s), 0);
  for (size_t i = 0; i < started.size(); ++i) {
    if (started[i].ok()) {
      contexts->push_back(*started[i]);
    } else {
      unreachable->push_back({Redacted(args.paths[i], args.paths), started[i].status()});
    }
  }
}

}  // namespace

int Push(Master& master, const std::vector<std::string>& args) {
  FileArgs parsed;
  if (!ParseFileArgs("push", args, &parsed)) return kExitUsage;
  std::vector<Context> contexts;
  std::vector<Unreachable> unreachable;
  StartTargets(master, parsed, &contexts, &unreachable);
  std::vector<ContextId> targets;
  for (const Context& c : contexts) targets.push_back(c.id());
  Progress progress;
  TransferOptions options = OptionsOf(parsed, &progress);
  absl::Time start = absl::Now();
  absl::StatusOr<TransferSummary> summary = TransferSummary();
  if (!targets.empty()) {
    summary = PushFiles(master.router(), targets, parsed.src, parsed.dest, options);
  }
  progress.End();
  if (!summary.ok()) {
    fprintf(stderr, "grove push: %s\n", Printable(summary.status().message()).c_str());
    return kExitFailed;
  }
  return Report("push", RegistryNames(master), parsed, *summary, unreachable,
                absl::Now() - start);
}

int Pull(Master& master, const std::vector<std::string>& args) {
  FileArgs parsed;
  if (!ParseFileArgs("pull", args, &parsed)) return kExitUsage;
  if (parsed.paths.size() != 1) {
    fprintf(stderr, "grove pull: takes one PATH\n");
    return kExitUsage;
  }
  std::vector<Context> contexts;
  std::vector<Unreachable> unreachable;
  StartTargets(master, parsed, &contexts, &unreachable);
  Progress progress;
  TransferOptions options = OptionsOf(parsed, &progress);
  absl::Time start = absl::Now();
  absl::StatusOr<TransferSummary> summary = TransferSummary();
  if (!contexts.empty()) {
    summary =
        PullFiles(master.router(), contexts.front().id(), parsed.src, parsed.dest, options);
  }
  progress.End();
  if (!summary.ok()) {
    fprintf(stderr, "grove pull: from %s: %s\n", Printable(contexts.front().name()).c_str(),
            Printable(summary.status().message()).c_str());
    return summary.status().code() == absl::StatusCode::kDeadlineExceeded ? kExitTimeout
                                                                          : kExitFailed;
  }
  return Report("pull", RegistryNames(master), parsed, *summary, unreachable,
                absl::Now() - start);
}

int AttachedTransfer(v1::Control::Stub& stub, const char* verb,
                     const std::vector<std::string>& args) {
  const bool pull = std::string(verb) == "pull";
  FileArgs parsed;
  if (!ParseFileArgs(verb, args, &parsed)) return kExitUsage;
  if (pull && parsed.paths.size() != 1) {
    fprintf(stderr, "grove pull: takes one PATH\n");
    return kExitUsage;
  }
  v1::TransferRequest request;
  for (const std::string& p : parsed.paths) request.add_paths(p);
  request.set_src(pull ? parsed.src : AbsolutePath(parsed.src));
  request.set_dest(pull ? AbsolutePath(parsed.dest) : parsed.dest);
  request.set_recursive(parsed.recursive);
  request.set_no_kernel_copy(!parsed.kernel_copy);
  if (parsed.timeout_s > 0) request.set_timeout_ms(static_cast<int64_t>(parsed.timeout_s * 1000));
  request.set_connect_timeout_ms(static_cast<int64_t>(parsed.connect_s * 1000));
  grpc::ClientContext context;
  const uint64_t on_cancel = CliCancel().AddCallback([&context] { context.TryCancel(); });
  Progress progress;
  const absl::Time start = absl::Now();
  auto reader = pull ? stub.Pull(&context, request) : stub.Push(&context, request);
  v1::TransferEvent event;
  v1::TransferResult result;
  while (reader->Read(&event)) {
    if (event.has_progress()) progress.Update(event.progress().done(), event.progress().total());
    if (event.has_result()) result = event.result();
  }
  grpc::Status status = reader->Finish();
  CliCancel().RemoveCallback(on_cancel);
  progress.End();
  if (!status.ok()) {
    fprintf(stderr, "grove %s: %s\n", verb,
            Printable(Redacted(status.error_message(), parsed.paths)).c_str());
    return status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? kExitTimeout
                                                                      : kExitFailed;
  }
  // The results as the private tree's verbs report them; ids are indices into the targets.
  TransferSummary summary;
  summary.bytes = result.bytes();
  summary.entries = result.entries();
  std::vector<Unreachable> unreachable;
  for (int i = 0; i < result.targets_size(); ++i) {
    const v1::TransferTarget& t = result.targets(i);
    absl::Status outcome(StatusCodeFromWire(t.code()), t.error());
    if (t.unreachable()) {
      unreachable.push_back({Redacted(t.path(), parsed.paths), outcome});
    } else {
      summary.results.push_back({ContextId(i), outcome});
    }
  }
  auto name_of = [&result](ContextId id) { return result.targets(id.value()).context(); };
  return Report(verb, name_of, parsed, summary, unreachable, absl::Now() - start);
}

bool ParseCallArgs(const std::vector<std::string>& raw_args, std::vector<std::string>* args,
                   double* timeout_s) {
  for (size_t i = 0; i < raw_args.size(); ++i) {
    if (raw_args[i] == "--timeout") {
      if (i + 1 >= raw_args.size() || !ParsePositive(raw_args[i + 1], timeout_s)) {
        fprintf(stderr, "grove call: --timeout needs a number of seconds above 0\n");
        return false;
      }
      ++i;
    } else {
      args->push_back(raw_args[i]);
    }
  }
  if (args->size() != 3) {
    fprintf(stderr, "grove call: need [--timeout S] PATH FUNCTION 'JSON'\n");
    return false;
  }
  return true;
}

int Call(Master& master, const std::vector<std::string>& raw_args) {
  std::vector<std::string> args;
  double timeout_s = 0;
  if (!ParseCallArgs(raw_args, &args, &timeout_s)) return kExitUsage;
  CallOptions call;
  call.cancel = &CliCancel();
  if (timeout_s > 0) call.timeout = absl::Seconds(timeout_s);
  const std::string& function = args[1];
  // The function's types: registered in this program (the CLI) or a built-in.
  const Function* f = CliFunctions().Find(function);
  if (f == nullptr) f = master.router().FindFunction(function);
  if (f == nullptr) {
    fprintf(stderr, "grove call: no function '%s' in this program\n", function.c_str());
    return 2;
  }
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  const google::protobuf::Descriptor* in_type = pool->FindMessageTypeByName(f->argument_type);
  const google::protobuf::Descriptor* out_type = pool->FindMessageTypeByName(f->result_type);
  if (in_type == nullptr || out_type == nullptr) {
    fprintf(stderr, "grove call: unknown types of '%s'\n", function.c_str());
    return 2;
  }
  google::protobuf::MessageFactory* factory = google::protobuf::MessageFactory::generated_factory();
  std::unique_ptr<google::protobuf::Message> in(factory->GetPrototype(in_type)->New());
  if (absl::Status parsed = JsonToMessage(args[2], in.get()); !parsed.ok()) {
    fprintf(stderr, "grove call: the argument is not a %s in JSON: %s\n",
            in_type->full_name().c_str(), std::string(parsed.message()).c_str());
    return kExitUsage;
  }
  absl::StatusOr<std::vector<Context>> contexts = StartPaths(master, {args[0]}, absl::Seconds(30));
  if (!contexts.ok()) {
    fprintf(stderr, "grove call: %s\n",
            Printable(Redacted(std::string(contexts.status().message()), {args[0]})).c_str());
    return 255;
  }
  std::promise<absl::StatusOr<std::string>> promise;
  contexts->front().CallRaw(function, f->argument_type, in->SerializeAsString(), call,
                            [&promise](absl::StatusOr<std::string> r) {
                              promise.set_value(std::move(r));
                            });
  absl::StatusOr<std::string> result = promise.get_future().get();
  if (!result.ok()) {
    fprintf(stderr, "grove call: %s\n", Printable(result.status().ToString()).c_str());
    return result.status().code() == absl::StatusCode::kDeadlineExceeded ? kExitTimeout
           : result.status().code() == absl::StatusCode::kUnavailable   ? kExitUnreachable
                                                                         : kExitFailed;
  }
  std::unique_ptr<google::protobuf::Message> out(factory->GetPrototype(out_type)->New());
  out->ParseFromString(*result);
  absl::StatusOr<std::string> json = MessageToJson(*out);
  if (!json.ok()) {
    fprintf(stderr, "grove call: %s\n", std::string(json.status().message()).c_str());
    return kExitFailed;
  }
  printf("%s\n", json->c_str());
  return 0;
}

}  // namespace grove::cli
