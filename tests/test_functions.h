// Functions the multi-process tests register in every context (the test binary is the
// program that replicates itself).
#ifndef GROVE_TESTS_TEST_FUNCTIONS_H_
#define GROVE_TESTS_TEST_FUNCTIONS_H_

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
const Functions& TestFunctions();

}  // namespace grove::testing

#endif  // GROVE_TESTS_TEST_FUNCTIONS_H_
