// The receiving side of transfers in one context, and the built-ins that serve them
// (grove.file_receive, file_chunk, file_copy, file_stat, file_list, file_read, file_hold,
// file_stats).
#ifndef GROVE_FILES_SERVICE_H_
#define GROVE_FILES_SERVICE_H_

#include "router/functions.h"
#include "router/router.h"

namespace grove::files_internal {

// Installs the built-ins of FilesComponent into `functions`.
void RegisterFileFunctions(Router* router, Functions* functions);

}  // namespace grove::files_internal

#endif  // GROVE_FILES_SERVICE_H_
