"""`python -m server.health_probe`: exit 0 when grpc.health.v1 says SERVING, else 1.

The container images' HEALTHCHECK runs it: the image already has Python and grpcio, so it needs no
grpc_health_probe binary. It asks the same health service as Kubernetes' gRPC probes, on the port
the server was given through RECSYS_PORT (default 50051). Plaintext only, like Kubernetes' probes.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from client import RecommenderClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.health_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=f"127.0.0.1:{os.environ.get('RECSYS_PORT') or 50051}",
                        help="host:port of the gRPC server (default: 127.0.0.1:$RECSYS_PORT or 50051)")
    parser.add_argument("--service", default="", help='model name, or "" for the whole server (default)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        with RecommenderClient(args.target, timeout=args.timeout) as client:
            status = client.health(args.service)
    except grpc.RpcError as exc:
        status = exc.code().name
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
