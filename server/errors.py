"""One exception type carrying a gRPC status code, so deep code can say *what* was wrong and the
servicer alone decides how it goes on the wire."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def prefixed(self, prefix: str) -> ServingError:
        return ServingError(self.code, f"{prefix}: {self.message}")


def invalid(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, msg)


def not_found(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, msg)


def precondition(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, msg)


def exhausted(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, msg)


def deadline(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, msg)


def unavailable(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, msg)


def internal(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, msg)
