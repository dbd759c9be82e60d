#!/usr/bin/env python3
"""An ordinary gRPC client of grove.examples.Echo, through the ingress of a resident master.

It knows nothing of grove: Debian's python3-grpcio, and stubs generated from echo.proto with
Debian's grpc_python_plugin (`run` makes them). It makes a unary call, a server-streaming
call and a bidirectional stream, asks the ingress's health service about the service, then
makes CALLS more unary calls and says which replicas answered.

    python3 client.py ADDRESS [CALLS]
"""
import sys

import grpc

import echo_pb2
import echo_pb2_grpc


def health(channel, service):
    """grpc.health.v1.Health/Check, with the messages encoded by hand (no health stubs)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    name = service.encode()
    answer = check(b"\x0a" + bytes([len(name)]) + name, timeout=10)
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(answer, repr(answer))


def main():
    address = sys.argv[1]
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with grpc.insecure_channel(address) as channel:
        echo = echo_pb2_grpc.EchoStub(channel)
        reply = echo.Say(echo_pb2.EchoRequest(text="hello"), timeout=10)
        print(f"Say: {reply.text} (pid {reply.pid})")
        for reply in echo.Count(echo_pb2.EchoRequest(text="sheep", count=3), timeout=10):
            print(f"Count: {reply.text}")
        chat = echo.Chat(iter([echo_pb2.EchoRequest(text=t) for t in ["one", "two"]]),
                         timeout=10)
        for reply in chat:
            print(f"Chat: {reply.text}")
        print(f"health of grove.examples.Echo: {health(channel, 'grove.examples.Echo')}")
        pids = set()
        for i in range(calls):
            pids.add(echo.Say(echo_pb2.EchoRequest(text=str(i)), timeout=10).pid)
        print(f"{calls} calls answered by {len(pids)} replicas")
        try:
            channel.unary_unary("/nobody.Serves/This")(b"", timeout=10)
        except grpc.RpcError as error:
            print(f"unknown service: {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
