// Functions the multi-process tests register in every context (the test binary is the
// program that replicates itself).
#ifndef GROVE_TESTS_TEST_FUNCTIONS_H_
#define GROVE_TESTS_TEST_FUNCTIONS_H_

#include <memory>

#include "launch/fork_launcher.h"
#include "router/functions.h"

namespace grove::testing {

// The test program's functions:
//   echo(Echo) -> Echo                  returns its argument, text prefixed "<context>: "
//   fail(FailRequest) -> Echo           returns the given status
//   forward(Forward) -> Echo            calls `function` in context `target` from here
//   print(PrintRequest) -> Count        writes to stdout/stderr/glog
//   crash(Echo) -> Echo                 aborts the process
//   for_descendants(Echo) -> Echo       callable by descendants
//   for_anyone(Echo) -> Echo            callable by any context
//   random(Echo) -> Count               a number from a generator seeded when the functions
//                                       were built (before the zygote started), which a fork
//                                       hook re-seeds in every fork child
//   random_unseeded(Echo) -> Count      the same from a generator that nothing re-seeds
//   random_libc(Echo) -> Count          rand(), never seeded by the program
const Functions& TestFunctions();

// The zygote main() started for the tests' masters (MasterOptions::zygote); null until then.
std::shared_ptr<Zygote> TestZygote();
void SetTestZygote(std::shared_ptr<Zygote> zygote);

}  // namespace grove::testing

#endif  // GROVE_TESTS_TEST_FUNCTIONS_H_
