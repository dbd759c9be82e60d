#!/usr/bin/env python3
"""A client of a resident grove master, written against its control API only.

It uses Debian's python3-grpcio and stubs generated from proto/control.proto with Debian's
grpc_python_plugin (examples/control/run shows how). It starts a context, runs a command in it
with the output streamed, calls a built-in function, checks the health service hosted there,
and prints the registry's events meanwhile, then stops what it started.

    python3 control_client.py [SOCKET]

SOCKET defaults to what `grove status` prints ($XDG_RUNTIME_DIR/grove/control.sock, or
~/.cache/grove/run/control.sock).
"""
import os
import sys
import threading

import grpc

import builtins_pb2
import control_pb2
import control_pb2_grpc


def default_socket():
    if os.environ.get("GROVE_SOCKET"):
        return os.environ["GROVE_SOCKET"]
    if os.environ.get("GROVE_RUNTIME_DIR"):
        return os.path.join(os.environ["GROVE_RUNTIME_DIR"], "control.sock")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "grove", "control.sock")
    return os.path.expanduser("~/.cache/grove/run/control.sock")


def main():
    socket = sys.argv[1] if len(sys.argv) > 1 else default_socket()
    channel = grpc.insecure_channel("unix:" + socket)
    control = control_pb2_grpc.ControlStub(channel)

    version = control.Version(control_pb2.VersionRequest(), timeout=10)
    if version.api_version != 1:
        sys.exit(f"the resident master speaks control API v{version.api_version}; this client v1")
    print(f"resident master pid {version.pid}, grove {version.version}")

    # Registry events, from another thread, until the watch is cancelled.
    watch = control.WatchContexts(control_pb2.WatchContextsRequest())
    added = threading.Event()
    removed = threading.Event()

    def print_events():
        try:
            for event in watch:
                kind = control_pb2.ContextEvent.Kind.Name(event.kind)
                print(f"event {kind} {event.context.name} (id {event.context.id})", flush=True)
                if kind == "ADDED" and event.context.name == "py-worker":
                    added.set()
                if kind == "REMOVED" and event.context.name == "py-worker":
                    removed.set()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise

    watcher = threading.Thread(target=print_events)
    watcher.start()

    worker = control.Spawn(control_pb2.SpawnPathRequest(path="local,name=py-worker"), timeout=30)
    print(f"started {worker.name} (pid {worker.pid}) at path {worker.path}")
    added.wait(10)

    request = control_pb2.ControlRunRequest(
        path="local,name=py-worker",
        command=builtins_pb2.RunRequest(argv=[b"sh", b"-c", b"echo hello from $0; echo to stderr >&2"]))
    for event in control.Run(request, timeout=30):
        which = event.WhichOneof("event")
        if which == "stdout":
            print("stdout: " + event.stdout.decode(), end="")
        elif which == "stderr":
            print("stderr: " + event.stderr.decode(), end="")
        elif which == "exit":
            print(f"exit status {event.exit.exit_status}")

    info = control.Call(control_pb2.ControlCallRequest(
        path="local,name=py-worker", function="grove.info", json="{}"), timeout=10)
    print(f"grove.info from {info.context}: {info.json}")

    # A gRPC service hosted in the context, through the tree: the standard health check.
    # grpc.health.v1.HealthCheckRequest{} is empty; the response's field 1 is the status.
    def health_check():
        yield control_pb2.ForwardRequest(start=control_pb2.ForwardStart(
            path="local,name=py-worker", method="/grpc.health.v1.Health/Check"))
        yield control_pb2.ForwardRequest(message=b"")
    answers = [r.message for r in control.Forward(health_check(), timeout=10)]
    serving = answers == [b"\x08\x01"]
    print("health of py-worker: " + ("SERVING" if serving else repr(answers)))

    control.Stop(control_pb2.StopPathRequest(path="local,name=py-worker"), timeout=30)
    print("stopped py-worker")
    # The watch is its own stream: its REMOVED event may arrive after Stop has answered.
    removed.wait(10)
    watch.cancel()
    watcher.join()


if __name__ == "__main__":
    main()
