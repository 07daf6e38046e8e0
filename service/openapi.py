"""The OpenAPI 3.1 document of the HTTP/JSON gateway, derived from the protobuf descriptors.

The protos are the one source of truth: every route is a ``nerve.v1.NerveService`` method (see
:data:`nerve.service.http.ROUTES`) and every schema is the message's protobuf JSON mapping, as
``google.protobuf.json_format`` reads and writes it: field names in lowerCamelCase (the snake_case proto names
are accepted too), enums by name, 64-bit integers as strings (numbers accepted), maps as objects.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
          FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The gRPC status code name, e.g. INVALID_ARGUMENT."},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        },
    },
}


class _Schemas:
    """Collects the component schemas reachable from the messages asked for."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, desc: Descriptor | EnumDescriptor) -> dict[str, str]:
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {}  # reserve first: messages may refer to themselves
            self.components[name] = self._enum(desc) if isinstance(desc, EnumDescriptor) else self._message(desc)
        return {"$ref": f"#/components/schemas/{name}"}

    @staticmethod
    def _enum(desc: EnumDescriptor) -> dict[str, Any]:
        return {"type": "string", "enum": [v.name for v in desc.values],
                "description": "By name (the number is accepted too)."}

    def _message(self, desc: Descriptor) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for f in desc.fields:
            props[f.json_name] = self._field(f)
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        oneofs = [o for o in desc.oneofs if not o.name.startswith("_")]
        if oneofs:
            schema["description"] = "; ".join(
                f"at most one of {', '.join(f.json_name for f in o.fields)}" for o in oneofs)
        return schema

    def _field(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(f)
        if f.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(f.message_type)
        if f.type == FieldDescriptor.TYPE_ENUM:
            return self.ref(f.enum_type)
        if f.type in _INT64:
            return {"type": ["string", "integer"], "format": "int64",
                    "description": "A 64-bit integer: a string in answers, a string or a number in requests."}
        return dict(_SCALARS[f.type])


def openapi_document(routes: list[Any], *, title: str = "nerve", version: str = "v1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (:class:`nerve.service.http.Route`)."""
    schemas = _Schemas()
    headers = [
        {"name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Request id echoed in the answer's x-request-id header and in the server's log."},
        {"name": "X-Server-Timeout", "in": "header", "required": False, "schema": {"type": "number", "minimum": 0},
         "description": "Deadline in seconds (the gRPC deadline of the call); past it the answer is 504."},
    ]
    error = {"description": "A gRPC status mapped to HTTP (400, 401, 403, 404, 429, 499, 500, 503, 504, ...).",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, Any] = {}
    for route in routes:
        request, response = schemas.ref(route.request), schemas.ref(route.response)
        op: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "parameters": headers}
        if route.streaming:
            op["requestBody"] = {"required": True, "content": {
                "application/x-ndjson": {"schema": request},
                "application/json": {"schema": {"type": "array", "items": request}},
            }, "description": "One message per line (or a JSON array of them): the config first, then examples."}
            op["responses"] = {"200": {"description": "One message per line as the work proceeds; a line "
                                       "{\"error\": ...} ends a stream that failed after it began.",
                                       "content": {"application/x-ndjson": {"schema": response}}},
                               "default": error}
        else:
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": request}}}
            op["responses"] = {"200": {"description": "OK", "content": {"application/json": {"schema": response}}},
                               "default": error}
        paths.setdefault(route.path, {})["post"] = op
        if route.get:
            paths[route.path]["get"] = {k: v for k, v in op.items() if k != "requestBody"} | {
                "operationId": f"{route.name}Get"}
    health = {"200": {"description": "SERVING", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"status": {"type": "string"}}}}}},
        "503": {"description": "NOT_SERVING: loading, draining or failed"}}
    paths["/v1/health"] = {"get": {"operationId": "health", "summary": "grpc.health.v1 Check of the server",
                                   "responses": health}}
    schemas.components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "nerve's gRPC API as JSON over HTTP: the same calls, limits, errors and metrics."},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Only when the server has an auth_token."}},
        },
    }
