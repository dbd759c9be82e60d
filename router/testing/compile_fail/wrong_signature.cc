// Must not compile: a function registered as <StringValue, StringValue> that takes no
// CallContext. router/testing/compile_fail_test.sh checks that the compiler says why.
#include "google/protobuf/wrappers.pb.h"
#include "router/functions.h"

void RegisterWrong(grove::Functions& functions) {
  functions.Register<google::protobuf::StringValue, google::protobuf::StringValue>(
      "wrong", [](const google::protobuf::StringValue& in) { return in; });
}
