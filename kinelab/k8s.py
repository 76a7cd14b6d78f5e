"""What a Kine value holds, as far as kube-apiserver wrote it.

kube-apiserver stores objects as protobuf: the 4-byte magic ``k8s\\0`` followed by a
``runtime.Unknown`` message (``k8s.io/apimachinery/pkg/runtime/generated.proto``) whose field 1 is a
``TypeMeta{apiVersion=1, kind=2}``. Custom resources are JSON. Values encrypted at rest start with
``k8s:enc:<provider>:v1:``. The protobuf is parsed with the protobuf runtime from a descriptor built
here, so no generated Kubernetes code is needed.
"""

from __future__ import annotations

import json
import re
from typing import Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc
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


def _object_meta_class():
    """Just enough of a Kubernetes object to read who wrote it: metadata (field 1 of every object) and its
    managedFields (ObjectMeta field 17: manager 1, operation 2, time 4 = Time{seconds 1}), and a Lease's
    spec.holderIdentity (LeaseSpec field 1). Every other field is skipped as unknown."""
    T = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="kinelab/k8s_meta.proto", package="kinelab.k8s.meta",
                                              syntax="proto2")
    time = file.message_type.add(name="Time")
    time.field.add(name="seconds", number=1, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    entry = file.message_type.add(name="ManagedFieldsEntry")
    entry.field.add(name="manager", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="operation", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="time", number=4, type=T.TYPE_MESSAGE, type_name=".kinelab.k8s.meta.Time",
                    label=T.LABEL_OPTIONAL)
    meta = file.message_type.add(name="ObjectMeta")
    meta.field.add(name="managedFields", number=17, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                   type_name=".kinelab.k8s.meta.ManagedFieldsEntry")
    spec = file.message_type.add(name="LeaseSpec")
    spec.field.add(name="holderIdentity", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    obj = file.message_type.add(name="Object")
    obj.field.add(name="metadata", number=1, type=T.TYPE_MESSAGE, type_name=".kinelab.k8s.meta.ObjectMeta",
                  label=T.LABEL_OPTIONAL)
    obj.field.add(name="leaseSpec", number=2, type=T.TYPE_MESSAGE, type_name=".kinelab.k8s.meta.LeaseSpec",
                  label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kinelab.k8s.meta.Object"))


_Object = _object_meta_class()
_VERSION_SUFFIX = re.compile(r"-v\d+\.\d+\.\d+\S*$")  # kinelab's cached binaries carry their version in their name


def decode_writer(value: Optional[bytes]) -> Optional[str]:
    """Who last wrote a kube-apiserver protobuf value: the manager of its newest managedFields entry (the
    program that sent the write: kube-controller-manager, kube-scheduler, kwok, a kubelet...), or None when
    the value says nothing (no managedFields, not protobuf, encrypted). Never raises."""
    if not value or not value.startswith(PROTOBUF_MAGIC):
        return None
    try:
        envelope = Unknown.FromString(value[len(PROTOBUF_MAGIC):])
        entries = _Object.FromString(envelope.raw).metadata.managedFields
    except Exception:  # a corrupt or unexpected value names no writer
        return None
    if not entries:
        return None
    newest = max(enumerate(entries), key=lambda item: (item[1].time.seconds, item[0]))[1]
    return _VERSION_SUFFIX.sub("", newest.manager) or None



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


def decode_values(values: pa.Array) -> tuple:
    """`decode_value` over a whole Arrow column: (encoding, api_version, kind) string arrays.

    An apiserver value starts magic + 0x0a <len> TypeMeta, so its first 6 + len bytes are a complete
    runtime.Unknown holding just the type. Such headers repeat (one per resource type), so each distinct
    header is decoded once and rows pick their result by index. JSON, encrypted and unusual values go
    through `decode_value` one by one. (A value whose header parses but whose tail is corrupt is reported
    as protobuf here.)"""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lookup: list = []
    codes = pa.nulls(len(values), pa.int32())  # null code: no value (a tombstone)
    handled = pc.fill_null(pc.equal(pc.binary_length(values), 0), True)
    is_protobuf = pc.fill_null(pc.starts_with(values, pattern=PROTOBUF_MAGIC), False)
    if pc.any(is_protobuf).as_py():
        tag_and_length = pc.binary_slice(values, 4, 6)
        for key in pc.unique(tag_and_length.filter(is_protobuf)).to_pylist():
            if len(key) != 2 or key[0] != 0x0A or key[1] >= 0x80:
                continue  # not the usual one-byte-length layout: decoded row by row below
            mask = pc.and_(is_protobuf, pc.fill_null(pc.equal(tag_and_length, pa.scalar(key, pa.binary())), False))
            headers = pc.binary_slice(values, 0, 6 + key[1]).filter(mask).dictionary_encode()
            decoded = [decode_value(h) for h in headers.dictionary.to_pylist()]
            if any(d[0] != "protobuf" for d in decoded):
                continue
            codes = pc.replace_with_mask(codes, mask, pc.add(headers.indices, len(lookup)).cast(pa.int32()))
            lookup += decoded
            handled = pc.or_(handled, mask)
    rest = pc.invert(handled)
    if pc.any(rest).as_py():
        others = values.filter(rest).to_pylist()
        codes = pc.replace_with_mask(codes, rest, pa.array(range(len(lookup), len(lookup) + len(others)), pa.int32()))
        lookup += [decode_value(v) for v in others]
    columns = list(zip(*lookup)) if lookup else [(), (), ()]
    return tuple(pa.array(column, pa.string()).take(codes) for column in columns)
