"""What a Kine value holds, as far as kube-apiserver wrote it.

kube-apiserver stores objects as protobuf: the 4-byte magic ``k8s\\0`` followed by a
``runtime.Unknown`` message (``k8s.io/apimachinery/pkg/runtime/generated.proto``) whose field 1 is a
``TypeMeta{apiVersion=1, kind=2}``. Custom resources are JSON. Values encrypted at rest start with
``k8s:enc:<provider>:v1:``. The protobuf is parsed with the protobuf runtime from a descriptor built
here, so no generated Kubernetes code is needed.
"""

from __future__ import annotations

import json
from typing import Optional, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTOBUF_MAGIC = b"k8s\x00"
ENCRYPTED_PREFIX = b"k8s:enc:"


def _unknown_message_class():
    file = descriptor_pb2.FileDescriptorProto(name="kinelab/k8s_runtime.proto", package="kinelab.k8s.runtime",
                                              syntax="proto2")
    string, bytes_, optional = (descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                                descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    type_meta = file.message_type.add(name="TypeMeta")
    type_meta.field.add(name="apiVersion", number=1, type=string, label=optional)
    type_meta.field.add(name="kind", number=2, type=string, label=optional)
    unknown = file.message_type.add(name="Unknown")
    unknown.field.add(name="typeMeta", number=1, label=optional,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=".kinelab.k8s.runtime.TypeMeta")
    unknown.field.add(name="raw", number=2, type=bytes_, label=optional)
    unknown.field.add(name="contentEncoding", number=3, type=string, label=optional)
    unknown.field.add(name="contentType", number=4, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kinelab.k8s.runtime.Unknown"))


Unknown = _unknown_message_class()



def encode_object(api_version: str, kind: str, raw: bytes) -> bytes:
    """A value as kube-apiserver stores it: magic, then runtime.Unknown{typeMeta, raw, contentType}."""
    message = Unknown(raw=raw, contentEncoding="", contentType="")
    message.typeMeta.apiVersion, message.typeMeta.kind = api_version, kind
    return PROTOBUF_MAGIC + message.SerializeToString()


Decoded = Tuple[Optional[str], Optional[str], Optional[str]]  # (encoding, api_version, kind)


def decode_value(value: Optional[bytes]) -> Decoded:
    """(encoding, api_version, kind) for one value; never raises on malformed input."""
    if not value:
        return (None, None, None)
    if value.startswith(ENCRYPTED_PREFIX):
        return ("encrypted", None, None)
    if value.startswith(PROTOBUF_MAGIC):
        try:
            meta = Unknown.FromString(value[len(PROTOBUF_MAGIC):]).typeMeta
        except Exception:  # DecodeError and friends: a corrupt value must not fail a capture
            return ("protobuf-invalid", None, None)
        return ("protobuf", meta.apiVersion or None, meta.kind or None)
    if value[:1] == b"{":
        try:
            obj = json.loads(value)
        except ValueError:
            return ("raw", None, None)
        if isinstance(obj, dict):
            api_version, kind = obj.get("apiVersion"), obj.get("kind")
            return ("json", api_version if isinstance(api_version, str) else None,
                    kind if isinstance(kind, str) else None)
        return ("json", None, None)
    return ("raw", None, None)
