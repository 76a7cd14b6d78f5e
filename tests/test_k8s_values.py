"""Decoding what kube-apiserver stores. The protobuf fixture is encoded by hand from the published wire
format (runtime.Unknown in k8s.io/apimachinery/pkg/runtime/generated.proto), independently of kinelab."""

import json

from kinelab.k8s import decode_value, encode_object


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def hand_encoded(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field_bytes(1, api_version.encode()) + field_bytes(2, kind.encode())
    unknown = field_bytes(1, type_meta) + field_bytes(2, raw) + field_bytes(3, b"") + field_bytes(4, b"")
    return b"k8s\x00" + unknown


def test_hand_encoded_protobuf_envelope_decodes():
    raw = bytes(range(256)) * 3  # long enough for a two-byte length varint
    assert decode_value(hand_encoded("apps/v1", "Deployment", raw)) == ("protobuf", "apps/v1", "Deployment")


def test_kinelabs_encoder_matches_the_wire_format():
    assert encode_object("v1", "ConfigMap", b"\x01\x02") == hand_encoded("v1", "ConfigMap", b"\x01\x02")


def test_json_custom_resource_made_by_the_kubernetes_client():
    from kubernetes.client import ApiClient, V1ConfigMap, V1ObjectMeta

    obj = V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=V1ObjectMeta(name="a", namespace="b"),
                      data={"k": "v"})
    value = json.dumps(ApiClient().sanitize_for_serialization(obj)).encode()
    assert decode_value(value) == ("json", "v1", "ConfigMap")


def test_encrypted_truncated_and_raw_values_never_raise():
    assert decode_value(b"k8s:enc:aescbc:v1:key1:\x00\x01garbage") == ("encrypted", None, None)
    assert decode_value(hand_encoded("v1", "Pod", b"x" * 50)[:12]) == ("protobuf-invalid", None, None)
    assert decode_value(b'{"health":"true"}') == ("json", None, None)
    assert decode_value(b"{not json") == ("raw", None, None)
    assert decode_value(None) == (None, None, None)


def test_column_decoding_agrees_with_row_decoding():
    import pyarrow as pa

    from kinelab.k8s import decode_values

    values = [hand_encoded("v1", "ConfigMap", b"a" * 300), None, hand_encoded("apps/v1", "Deployment", b"b" * 9),
              b'{"apiVersion":"example.com/v1","kind":"Widget"}', b"k8s:enc:aescbc:v1:k:\x00",
              hand_encoded("v1", "ConfigMap", b"c" * 2000), hand_encoded("v1", "Pod", b"x")[:9], b"", b"plain",
              hand_encoded("x" * 200, "LongGroupVersion", b"y")]  # a two-byte length: decoded row by row
    columns = decode_values(pa.array(values, pa.binary()))
    assert list(zip(*(c.to_pylist() for c in columns))) == [decode_value(v) for v in values]
