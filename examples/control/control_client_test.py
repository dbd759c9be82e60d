#!/usr/bin/python3
"""Runs examples/control/run (stubs made with Debian's grpc_python_plugin, then
control_client.py) against a real resident master started with `grove up`, and checks what
it prints. The resident master is detached by `grove up`; this test makes itself the
subreaper of what it starts, so it can reap it after `grove down` and leave nothing behind."""
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

runfiles = os.path.join(os.environ["TEST_SRCDIR"], "grove")
grove = os.path.join(runfiles, "tools/grove")
run = os.path.join(runfiles, "examples/control/run")
work = tempfile.mkdtemp(prefix="grove-control.")  # Short: a socket path has 108 bytes.
env = dict(os.environ, GROVE_RUNTIME_DIR=os.path.join(work, "run"),
           GROVE_PROTO_DIR=os.path.join(runfiles, "proto"))
env.pop("GROVE_SOCKET", None)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


try:
    up = subprocess.run([grove, "up"], env=env, capture_output=True, text=True, timeout=60)
    if up.returncode != 0:
        fail("grove up: " + up.stderr)
    client = subprocess.run([run], env=env, capture_output=True, text=True, timeout=120)
    out = client.stdout
    if client.returncode != 0:
        fail(f"the client exited {client.returncode}: {out}{client.stderr}")
    for expected in ["resident master pid ", "started py-worker (pid ", "event ADDED py-worker",
                     "stdout: hello from sh", "stderr: to stderr", "exit status 0",
                     "grove.info from py-worker: {", "health of py-worker: SERVING",
                     "event REMOVED py-worker", "stopped py-worker"]:
        if expected not in out:
            fail(f"no '{expected}' in: {out}")
    status = subprocess.run([grove, "status"], env=env, capture_output=True, text=True, timeout=30)
    if "py-worker" in status.stdout:
        fail("py-worker is still kept: " + status.stdout)
finally:
    subprocess.run([grove, "down"], env=env, capture_output=True, timeout=60)
    # The master and its zygote were reparented here: reap them.
    while True:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            break
    shutil.rmtree(work, ignore_errors=True)
print("PASS: the Python client started a context, ran a command, called a function, watched")
