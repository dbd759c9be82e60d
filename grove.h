// grove: write C++ functions once, call them in any context of a tree of processes.
//
// The one header users include. See README.md for a tour.
#ifndef GROVE_GROVE_H_
#define GROVE_GROVE_H_

#include "child/agent.h"           // IsAgentInvocation, RunAgent (for custom main()s)
#include "common/context_id.h"     // ContextId
#include "common/status_util.h"    // OriginOf
#include "master/master.h"         // Master, MasterOptions, Main
#include "proto/builtins.pb.h"     // RunRequest, RunReply, InfoReply, ...
#include "router/context.h"        // Context
#include "files/files.h"          // PushFiles, PullFiles
#include "router/functions.h"      // Functions, CallContext, CallableBy
#include "link/hop.h"            // ParsePath, ParseHop
#include "mesh/mesh.h"           // ChannelTo (gRPC services through the tree)
#include "router/registry.h"       // Registry, ContextRecord
#include "router/router.h"         // Router, CallOptions
#include "resident/attach.h"       // Attach: a resident master's tree from another process
#include "resident/resident.h"     // ResidentOptions, ServeResident (grove up)

#endif  // GROVE_GROVE_H_
