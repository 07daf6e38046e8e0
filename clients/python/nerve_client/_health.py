"""A minimal client for the standard ``grpc.health.v1.Health/Check`` method.

The SDK depends on grpcio and protobuf only, so it does not use ``grpcio-health-checking``. Nor does it
generate ``health_pb2`` from a vendored ``health.proto``: that file would register ``grpc/health/v1/health.proto``
in protobuf's *default* descriptor pool, and a process that also imports ``grpc_health.v1.health_pb2`` (any
server, or a test with one) fails at import time as soon as the two copies differ (upstream added messages
to that file over time). Instead the two messages are built at import time in a *private* descriptor pool:
their wire format is all that matters, and a private pool cannot clash with anything.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

CHECK_METHOD = "/grpc.health.v1.Health/Check"

_F = descriptor_pb2.FieldDescriptorProto


def _build():
    fdp = descriptor_pb2.FileDescriptorProto(
        name="nerve_client/_private/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    req = fdp.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", json_name="service", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    resp = fdp.message_type.add(name="HealthCheckResponse")
    status = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    resp.field.add(
        name="status", json_name="status", number=1, type=_F.TYPE_ENUM, label=_F.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    request_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
    response_desc = pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
    return request_cls, message_factory.GetMessageClass(response_desc), response_desc.enum_types_by_name[
        "ServingStatus"
    ]


HealthCheckRequest, HealthCheckResponse, _STATUS = _build()


def status_name(response) -> str:
    """``"SERVING"``, ``"NOT_SERVING"``, ``"UNKNOWN"``, ``"SERVICE_UNKNOWN"`` (or the number if newer)."""
    value = _STATUS.values_by_number.get(response.status)
    return value.name if value is not None else str(response.status)
