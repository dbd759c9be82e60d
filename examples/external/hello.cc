// The README's example: register a function, start a child that starts its own child, and
// call the function two hops away.
#include <unistd.h>

#include <iostream>

#include "hello.pb.h"
#include "grove.h"

int main(int argc, char** argv) {
  grove::Functions functions;
  functions.Register<hello::Greeting, hello::Greeting>(
      "greet", [](const hello::Greeting& in, grove::CallContext& call)
                   -> absl::StatusOr<hello::Greeting> {
        hello::Greeting out;
        out.set_text(in.text() + ", from " + call.router().name() + " (pid " +
                     std::to_string(getpid()) + ")");
        return out;
      });
  return grove::Main(argc, argv, functions, [](grove::Master& master) {
    absl::StatusOr<grove::Context> child = master.Spawn("local,name=child");
    if (!child.ok()) return (std::cerr << child.status() << "\n", 1);
    // The child starts its own child: the grandchild is the child's, not the master's.
    absl::StatusOr<grove::Context> grandchild = child->Spawn("local,name=grandchild");
    if (!grandchild.ok()) return (std::cerr << grandchild.status() << "\n", 1);
    hello::Greeting greeting;
    greeting.set_text("hello");
    absl::StatusOr<hello::Greeting> reply =
        grandchild->Call<hello::Greeting>("greet", greeting, {.timeout = absl::Seconds(10)});
    if (!reply.ok()) return (std::cerr << reply.status() << "\n", 1);
    std::cout << reply->text() << "\n";
    return 0;
  });
}
