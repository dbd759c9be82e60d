// Components: the parts of grove beyond routing (files/, mesh/, and whatever comes next)
// attach themselves to a router through this, so that the router never names them.
//
//   Router::Options options;
//   options.components = {FilesComponent(), MeshComponent()};
//   Router router(options);   // each component adds its built-ins and its state here
//
// A component is called once, on the constructing thread, from the router's constructor,
// after the router's own built-ins are in place. It adds its built-in functions to
// `builtins` (the router owns them; they must not outlive it) and may keep state for this
// router with Router::SetAttachment, found again with Router::attachment.
#ifndef GROVE_ROUTER_COMPONENT_H_
#define GROVE_ROUTER_COMPONENT_H_

#include <functional>

namespace grove {

class Functions;
class Router;

using Component = std::function<void(Router& router, Functions& builtins)>;

}  // namespace grove

#endif  // GROVE_ROUTER_COMPONENT_H_
