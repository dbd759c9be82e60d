// Fan-out: start eight local contexts, call a function in all of them at once with
// CallAsync, and gather the replies.
//
//   bazel run //examples/fanout
#include <future>
#include <iostream>
#include <vector>

#include "google/protobuf/wrappers.pb.h"
#include "grove.h"

using google::protobuf::StringValue;

int main(int argc, char** argv) {
  grove::Functions functions;
  // Runs in whichever context is called: says where it ran.
  functions.Register<StringValue, StringValue>(
      "where", [](const StringValue& in, grove::CallContext& call) -> absl::StatusOr<StringValue> {
        StringValue out;
        out.set_value(in.value() + " from " + call.router().name());
        return out;
      });
  return grove::Main(argc, argv, functions, [](grove::Master& master) {
    std::vector<grove::Context> workers;
    for (int i = 0; i < 8; ++i) {
      absl::StatusOr<grove::Context> c = master.Spawn("local,name=worker" + std::to_string(i));
      if (!c.ok()) {
        std::cerr << c.status() << "\n";
        return 1;
      }
      workers.push_back(*c);
    }
    StringValue hello;
    hello.set_value("hello");
    std::vector<std::future<absl::StatusOr<StringValue>>> replies;
    for (const grove::Context& w : workers) {
      replies.push_back(w.CallAsync<StringValue>("where", hello, {.timeout = absl::Seconds(10)}));
    }
    for (auto& reply : replies) {
      absl::StatusOr<StringValue> r = reply.get();
      if (!r.ok()) {
        std::cerr << r.status() << "\n";
        return 1;
      }
      std::cout << r->value() << "\n";  // hello from worker0 ...
    }
    return 0;
  });
}
