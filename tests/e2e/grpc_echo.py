"""A real gRPC server and client (grpcio) for the gRPC end-to-end test; no generated code:
the echo service takes and returns raw bytes.

  grpc_echo.py server PORT        serves portcullis.test.Echo/Say in the clear (h2c) until
                                  killed; prints "ready" once it listens
  grpc_echo.py call ADDR METHOD TOKEN
                                  calls /portcullis.test.Echo/METHOD at ADDR with the bearer
                                  TOKEN (`-`: none); prints the status code's name and the
                                  reply or the message
"""

import sys
from concurrent import futures

import grpc


def serve(port):
    def say(request, context):
        metadata = dict(context.invocation_metadata())
        subject = metadata.get("x-portcullis-subject", "nobody")
        return b"echo " + request + b" for " + subject.encode()

    handler = grpc.method_handlers_generic_handler(
        "portcullis.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(addr, method, token):
    with grpc.insecure_channel(addr) as channel:
        stub = channel.unary_unary(f"/portcullis.test.Echo/{method}")
        metadata = [] if token == "-" else [("authorization", f"Bearer {token}")]
        try:
            reply = stub(b"hi", metadata=metadata, timeout=10)
            print("OK", reply.decode())
        except grpc.RpcError as error:
            print(error.code().name, error.details())


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4])
