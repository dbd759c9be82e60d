// How the CLI ends early: Ctrl-C (SIGINT) and SIGTERM cancel what the verb is doing, so that
// commands are killed and transfers remove their temporary files, and then the CLI exits with
// the conventional status (128 + the signal). A second signal exits at once.
#ifndef GROVE_TOOLS_CLI_SIGNALS_H_
#define GROVE_TOOLS_CLI_SIGNALS_H_

#include "router/functions.h"

namespace grove::cli {

// Exit statuses the CLI's verbs share (docs/cli.md, "Exit status"). A command run by
// `grove run` exits with its own status (0-255) when every context ran it.
inline constexpr int kExitFailed = 1;        // Something failed (a transfer, a call).
inline constexpr int kExitUsage = 2;         // Bad arguments; nothing was started.
inline constexpr int kExitTimeout = 124;     // --timeout passed.
inline constexpr int kExitBrokenPipe = 141;  // stdout was closed (128 + SIGPIPE).
inline constexpr int kExitUnreachable = 255; // A context could not be reached.

// Installs the handlers; from then on a SIGINT or SIGTERM cancels CliCancel(). Call once,
// after the master (and its zygote) started: processes forked later must not inherit them.
void HandleInterrupts();

// Cancelled by the first SIGINT or SIGTERM (or by a verb that must stop: stdout closed).
CancelSource& CliCancel();

// The signal that cancelled CliCancel(), or 0.
int InterruptSignal();

}  // namespace grove::cli

#endif  // GROVE_TOOLS_CLI_SIGNALS_H_
