"""parse_json: the JSON of POST /jobs, /sweeps and predict, with no key given twice; and the
decompression of gzip and deflate bodies."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from service.api.bodies import REPEATED, _decompressed, encoding_of, parse_json
from service.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


def repeated_fields(body: bytes) -> list[str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_json(body)
    assert all(reason == REPEATED for _, reason in caught.value.fields)
    return [field for field, _ in caught.value.fields]


def test_a_key_given_twice_is_named_with_its_path() -> None:
    assert repeated_fields(b'{"epochs": 1, "epochs": 2}') == ["epochs"]
    assert repeated_fields(b'{"epochs": 1, "epochs": 1}') == ["epochs"]  # even the same value
    assert repeated_fields(b'{"a": 1, "b": 2, "a": 3, "b": 4}') == ["a", "b"]
    assert repeated_fields(b'{"base": {"lr": 0.1, "lr": 0.2}, "grid": {}}') == ["base.lr"]
    assert repeated_fields(b'{"inputs": [{"name": "x"}, {"name": "x", "name": "y"}]}') == [
        "inputs[1].name"
    ]
    assert repeated_fields(b'{"a": 1, "a": {"b": [[{"c": 1, "c": 2}]]}}') == ["a", "a.b[0][0].c"]


def test_json_without_repeats_is_returned_as_json_loads_gives_it() -> None:
    body = {"instances": [[[0] * 28] * 28] * 4, "seed": 1, "nested": {"a": [{"b": None}]}}
    raw = json.dumps(body).encode()
    assert parse_json(raw) == json.loads(raw) == body
    assert parse_json(b"[1, 2]") == [1, 2]
    # The same key in two different objects is not a repeat.
    assert parse_json(b'{"a": {"x": 1}, "b": {"x": 2}}') == {"a": {"x": 1}, "b": {"x": 2}}


def test_a_body_that_is_not_json_is_a_value_error() -> None:
    for raw in (b"{oops", b'{"a": 1,}', b"\xff"):
        with pytest.raises(ValueError):
            parse_json(raw)


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    """gzip members one after another are one body (RFC 1952, as gzip.decompress reads them);
    anything else after the data, a cut stream, or more than the limit inflated is refused."""
    a, b = b'{"instances": ', b"[[0]]}"
    assert _decompressed(gzip.compress(a) + gzip.compress(b), "gzip", 100) == a + b
    assert _decompressed(zlib.compress(a + b), "deflate", 100) == a + b
    for encoding, packed in (("gzip", gzip.compress(a)), ("deflate", zlib.compress(a))):
        with pytest.raises(InvalidRequest, match="more bytes after the"):
            _decompressed(packed + b"junk", encoding, 100)
        with pytest.raises(InvalidRequest, match="cut short"):
            _decompressed(packed[:-6], encoding, 100)
    with pytest.raises(InvalidRequest, match="not valid gzip"):
        _decompressed(b"\x1f\x8bnot really", "gzip", 100)
    bomb = gzip.compress(bytes(10_000_000))
    with pytest.raises(PayloadTooLarge):
        _decompressed(bomb, "gzip", 1_000)
    with pytest.raises(PayloadTooLarge):  # the limit counts every member
        _decompressed(gzip.compress(bytes(600)) * 2, "gzip", 1_000)
    assert len(_decompressed(gzip.compress(bytes(500)) * 2, "gzip", 1_000)) == 1_000
    # Members one after another, each copying what follows it: a bounded number of them.
    assert _decompressed(gzip.compress(b"") * 15 + gzip.compress(a), "gzip", 100) == a
    many = gzip.compress(b"", mtime=0) * 1_000_000
    with pytest.raises(InvalidRequest, match="more than 16 gzip members"):
        _decompressed(many, "gzip", 100)


def test_more_than_one_content_coding_is_refused() -> None:
    assert encoding_of([]) is None and encoding_of(["identity"]) is None
    assert encoding_of(["GZIP "]) == "gzip" and encoding_of(["identity, gzip"]) == "gzip"
    for values in (["gzip", "br"], ["gzip, br"], ["gzip", "gzip"]):
        with pytest.raises(UnsupportedMediaType, match="more than one coding"):
            encoding_of(values)
