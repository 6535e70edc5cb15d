"""Hostile request bodies against a real ``modelopt serve`` process (issue 23): compression
bombs, lying zip and safetensors headers, JSON nested past the stack, non-finite numbers,
unknown routes. Each gets its typed ``{"error", "detail"}`` answer without costing the server
memory (its peak resident memory, ``VmHWM``, is read from /proc), and good requests still get
the runner's answer afterwards."""

from __future__ import annotations

import io
import json
import zipfile
import zlib

import numpy as np
import pytest
import torch
from serve_helpers import ServeProcess, onnx_mlp

import modelopt_core as mo

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from modelopt_serve import codec  # noqa: E402
from modelopt_serve.replicas import load_runner  # noqa: E402

MAX_BODY_MB = 1  # so the npz inflation cap is 4 MB
#: the most a refused hostile body may raise the server's peak resident memory
SLACK_MB = 48


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return onnx_mlp(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def server(artifact):
    with ServeProcess(artifact, "--max-body-mb", str(MAX_BODY_MB), "--stats-interval-s",
                      "0") as s:
        yield s
    assert s.proc.returncode == 0, s.log()


@pytest.fixture(scope="module")
def name(artifact):
    return mo.load_artifact(artifact).inputs[0].name


@pytest.fixture(scope="module")
def runner(artifact):
    r = load_runner(mo.load_artifact(artifact), "onnxruntime")
    yield r
    r.close()


def post(server, body: bytes, ctype: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", content=body,
                      headers={"content-type": ctype, **headers}, timeout=60)


def typed(r: httpx.Response, status: int, error: str, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    for w in words:
        assert w in body["detail"], (w, body)
    return body


def still_serves(server, name, runner) -> None:
    x = torch.randn(3, 8)
    r = post(server, codec.encode_inputs({name: x}), codec.TENSORS)
    assert r.status_code == 200, r.text
    torch.testing.assert_close(codec.decode_outputs(r.content, codec.TENSORS)["output"],
                               runner(x), rtol=1e-5, atol=1e-5)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def zeros_npz(member: str, shape: tuple[int, ...]) -> bytes:
    """What ``np.savez_compressed(f, member=np.zeros(shape, np.float32))`` writes, streamed
    (the test never holds the inflated array)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z, \
            z.open(f"{member}.npy", "w", force_zip64=True) as f:
        f.write(npy_header(shape))
        left, chunk = 4 * int(np.prod(shape)), bytes(1 << 20)
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)
    return out.getvalue()


def lying_npz(member: str, declared_shape: tuple[int, ...], payload: int) -> bytes:
    """A deflated member whose zip entry and .npy header declare ``declared_shape`` float32,
    while its data inflates to ``payload`` bytes: the central directory's size is patched."""
    hdr = npy_header(declared_shape)
    data = hdr + bytes(payload)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{member}.npy", data)
    raw = bytearray(out.getvalue())
    declared = len(hdr) + 4 * int(np.prod(declared_shape))
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = declared.to_bytes(4, "little")  # uncompressed size
    raw[22:26] = declared.to_bytes(4, "little")  # and the local header's
    return bytes(raw)


def test_npz_bombs_are_refused_before_they_inflate(server, name, runner):
    """A 256 MB array of zeros compresses to ~250 KB: under the 1 MB body limit. Shaped
    wrong it gets 422 from its .npy header alone; shaped right, 413 from its declared size
    (over 4x the body limit); the server's peak memory does not move. (Before: the whole
    array was inflated first, then refused.)"""
    before = server.memory_mb()
    wrong = zeros_npz(name, (1, 2**26))
    fits = zeros_npz(name, (2**23, 8))
    assert len(wrong) < MAX_BODY_MB * 2**20 and len(fits) < MAX_BODY_MB * 2**20
    typed(post(server, wrong, codec.NPZ), 422, "InputSpecError", repr(name), "does not match")
    typed(post(server, fits, codec.NPZ), 413, "BadRequestError", "268435456 bytes",
          "over the limit of 4194304")
    after = server.memory_mb()
    assert after["VmHWM"] - before["VmHWM"] < SLACK_MB, (before, after)
    still_serves(server, name, runner)


def test_npz_members_are_checked_against_the_spec_before_reading(server, name, runner):
    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    x = np.ones((1, 8), np.float32)
    typed(post(server, npz(**{name: x, "extra": x}), codec.NPZ), 422, "InputSpecError",
          "unknown ['extra']")
    typed(post(server, npz(**{name: x.astype(np.float64)}), codec.NPZ), 422, "InputSpecError",
          "dtype float64 but the model takes float32")
    typed(post(server, npz(**{name: np.array([["a"] * 8])}), codec.NPZ), 422,
          "InputSpecError", "not accepted")
    # an object array is a pickle: refused from its header, never unpickled
    buf = io.BytesIO()
    np.savez(buf, **{name: np.array([[None] * 8], dtype=object)})
    typed(post(server, buf.getvalue(), codec.NPZ), 422, "InputSpecError", "object")
    # bzip2 members: zipfile inflates them without a bound per read
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as z:
        z.writestr(f"{name}.npy", npy_header((1, 8)) + bytes(32))
    typed(post(server, buf.getvalue(), codec.NPZ), 400, "BadRequestError",
          "compression method 12")
    # big-endian and Fortran-ordered arrays are fine
    y = np.arange(16, dtype=">f4").reshape(2, 8)
    r = post(server, npz(**{name: np.asfortranarray(y)}), codec.NPZ)
    assert r.status_code == 200, r.text
    torch.testing.assert_close(codec.decode_outputs(r.content, codec.NPZ)["output"],
                               runner(torch.from_numpy(y.astype(np.float32))),
                               rtol=1e-5, atol=1e-5)


def test_a_lying_zip_header_inflates_no_more_than_it_declares(server, name, runner):
    """The zip says 32 bytes of data ((1, 8) float32) while the stream holds 64 MB of zeros:
    reads stop at the declared size and the CRC check fails (400); memory does not move."""
    before = server.memory_mb()
    body = lying_npz(name, (1, 8), 64 * 2**20)
    assert len(body) < MAX_BODY_MB * 2**20
    typed(post(server, body, codec.NPZ), 400, "BadRequestError", "CRC")
    # a .npy header that claims more than the zip entry holds
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}.npy", npy_header((2**20, 8)) + bytes(32))
    typed(post(server, buf.getvalue(), codec.NPZ), 400, "BadRequestError", "declares")
    assert server.memory_mb()["VmHWM"] - before["VmHWM"] < SLACK_MB
    still_serves(server, name, runner)


def test_npz_with_more_members_than_inputs_is_refused_from_its_directory(server, name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(5000):  # 5000 entries: refused before zipfile builds an object each
            z.writestr(f"m{i}.npy", b"")
    typed(post(server, buf.getvalue(), codec.NPZ), 422, "InputSpecError", "5000 members")


def safetensors_body(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def test_safetensors_declared_sizes_must_fit_the_body(server, name, runner):
    before = server.memory_mb()
    huge = {name: {"dtype": "F32", "shape": [2**30, 8], "data_offsets": [0, 2**35]}}
    typed(post(server, safetensors_body(huge, bytes(64)), codec.TENSORS), 400,
          "BadRequestError", "34359738368 bytes", "holds 64 bytes")
    inside = {name: {"dtype": "F32", "shape": [2**20, 8], "data_offsets": [0, 32]}}
    typed(post(server, safetensors_body(inside, bytes(32)), codec.TENSORS), 400,
          "BadRequestError", "declares shape")
    typed(post(server, (2**40).to_bytes(8, "little") + b"{}", codec.TENSORS), 400,
          "BadRequestError", "header of 1099511627776 bytes")
    deep = safetensors_body({"__metadata__": {"a": "b"}, "x": [[[[[[[]]]]]]]})
    typed(post(server, deep, codec.TENSORS), 400, "BadRequestError", "nests")
    other = {"mask": {"dtype": "F32", "shape": [1, 8], "data_offsets": [0, 32]}}
    typed(post(server, safetensors_body(other, bytes(32)), codec.TENSORS), 422,
          "InputSpecError", "unknown ['mask']")
    assert server.memory_mb()["VmHWM"] - before["VmHWM"] < SLACK_MB
    still_serves(server, name, runner)


def test_deeply_nested_json_gets_400_not_a_recursion_error(server, name, runner):
    n = 100_000
    for body in [b'{"inputs": ' + b"[" * n + b"]" * n + b"}",
                 b'{"inputs": {"' + name.encode() + b'": ' + b"[" * n + b"}",  # unclosed
                 b'{"inputs": [' + b'{"a": ' * n + b"1" + b"}" * n + b"]}",
                 b"[" * 5 + b"]" * 5]:
        r = post(server, body, codec.JSON)
        typed(r, 400, "BadRequestError", "nests")
    # brackets inside strings do not count; depth rank + 2 is fine
    x = torch.randn(2, 8)
    doc = {"inputs": {name: x.tolist()}, "note": "[[[[[[[[[[\\\"[[[[{{{{"}
    r = post(server, json.dumps(doc).encode(), codec.JSON)
    assert r.status_code == 200, r.text
    torch.testing.assert_close(torch.tensor(r.json()["outputs"]), runner(x), rtol=1e-5,
                               atol=1e-5)
    assert "RecursionError" not in server.log() and "Traceback" not in server.log()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e39"])
def test_non_finite_json_inputs_get_400_naming_the_input(server, name, runner, literal):
    body = f'{{"inputs": {{"{name}": [[{literal}, 1, 2, 3, 4, 5, 6, 7]]}}}}'.encode()
    typed(post(server, body, codec.JSON), 400, "NonFiniteInputError", repr(name),
          "NaN or infinite", "send finite numbers")
    still_serves(server, name, runner)


def test_non_finite_binary_inputs_get_400(server, name):
    x = torch.ones(2, 8)
    x[1, 3] = float("nan")
    typed(post(server, codec.encode_inputs({name: x}, codec.TENSORS), codec.TENSORS), 400,
          "NonFiniteInputError", repr(name), "1 of 16")
    x[1, 3] = float("-inf")
    typed(post(server, codec.encode_inputs({name: x}, codec.NPZ), codec.NPZ), 400,
          "NonFiniteInputError", repr(name))


@pytest.mark.parametrize("method,path,status,error", [
    ("GET", "/nope", 404, "NotFoundError"), ("POST", "/predict/x", 404, "NotFoundError"),
    ("GET", "/predict", 405, "MethodNotAllowedError"),
    ("DELETE", "/metrics", 405, "MethodNotAllowedError")])
def test_unknown_routes_and_methods_get_the_typed_error_body(server, method, path, status,
                                                             error):
    r = httpx.request(method, f"{server.url}{path}")
    body = typed(r, status, error, path)
    if status == 405:
        assert r.headers["allow"] in body["detail"]


def test_reads_stop_at_the_declared_size(server, name, runner):
    """A member whose deflate stream goes on for 8 MB past the 32 data bytes its zip entry
    declares (the CRC is that of the declared bytes): only the declared bytes are inflated,
    and they are a valid (1, 8) array."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = comp.compress(npy_header((1, 8)) + bytes(8 * 2**20)) + comp.flush()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}.npy", npy_header((1, 8)) + bytes(32))
    raw = buf.getvalue()
    info = zipfile.ZipFile(io.BytesIO(raw)).infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode())
    body = bytearray(raw[:start] + stream + raw[start + info.compress_size:])
    shift = len(stream) - info.compress_size
    cd = raw.rindex(b"PK\x01\x02") + shift
    body[cd + 20:cd + 24] = len(stream).to_bytes(4, "little")  # compressed sizes
    body[18:22] = len(stream).to_bytes(4, "little")
    eocd = body.rindex(b"PK\x05\x06")
    body[eocd + 16:eocd + 20] = cd.to_bytes(4, "little")  # where the directory now starts
    before = server.memory_mb()
    r = post(server, bytes(body), codec.NPZ)
    assert r.status_code == 200, r.text
    torch.testing.assert_close(codec.decode_outputs(r.content, codec.NPZ)["output"],
                               runner(torch.zeros(1, 8)), rtol=1e-5, atol=1e-5)
    assert server.memory_mb()["VmHWM"] - before["VmHWM"] < SLACK_MB
