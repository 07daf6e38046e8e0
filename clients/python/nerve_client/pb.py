"""The generated protobuf and gRPC modules of ``nerve.v1``, for code that needs the raw messages.

The server imports its messages and servicer base class from here, so one process never holds two copies
of ``nerve/v1/*.proto`` in protobuf's default descriptor pool (two differing copies fail at import time).

>>> from nerve_client.pb import service_pb2, service_pb2_grpc, types_pb2     # doctest: +SKIP
"""

from ._proto.nerve.v1 import service_pb2, service_pb2_grpc, types_pb2

__all__ = ["service_pb2", "service_pb2_grpc", "types_pb2"]
