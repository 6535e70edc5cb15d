"""Bounded fuzz and soak of ``modelopt serve`` (issue 23), as CI runs it: a real server process
on a loopback port gets hypothesis-generated JSON, npz and safetensors bodies (valid and
invalid: wrong dtypes and shapes, non-finite numbers, deep nesting, huge declared sizes,
truncations, junk), then stalled, half-closed and abandoned connections while valid requests
keep flowing. Every answer is a correct 200 (equal to the runner's own answer for the same
input) or a typed 4xx/5xx with the ``{"error", "detail"}`` body; the server's resident memory
stays bounded (its /proc status before and after, peak included); /metrics counts equal the
client's counts by status. Bounded: a fixed number of examples (derandomized), ~20 s here."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zipfile
from collections import Counter

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from serve_helpers import ServeProcess, onnx_mlp, read_until_closed

import modelopt_core as mo

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from modelopt_serve import codec  # noqa: E402
from modelopt_serve.replicas import load_runner  # noqa: E402

MAX_BODY_MB = 0.25  # bodies over 256 KB get 413; npz may inflate to 1 MB
READ_TIMEOUT_S = 1.0
EXAMPLES = 200
STALLED, HALF_CLOSED, ABANDONED, STEADY = 8, 4, 8, 24
CLIENT_ERRORS = {400, 413, 415, 422}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return onnx_mlp(tmp_path_factory.mktemp("fuzz"))


# -- bodies ----------------------------------------------------------------------------------
# each strategy draws (body, content type, expected): expected is a float32 input tensor (the
# answer must be 200 and equal the runner's), or a set of acceptable error statuses (a 200 is
# then checked against the runner on the input the body decodes to)

NAME = "input"  # checked against the artifact's spec in the test
FINITE = st.floats(-100, 100, allow_nan=False, width=32)


def arrays(rows=st.integers(1, 4), cols=st.just(8)):
    return st.tuples(rows, cols).flatmap(
        lambda shape: st.lists(FINITE, min_size=shape[0] * shape[1],
                               max_size=shape[0] * shape[1]).map(
            lambda xs: torch.tensor(xs, dtype=torch.float32).reshape(shape)))


MEDIA = st.sampled_from([codec.JSON, codec.TENSORS, codec.NPZ])


@st.composite
def valid(draw):
    x, media = draw(arrays()), draw(MEDIA)
    return codec.encode_inputs({NAME: x}, media), media, x


@st.composite
def non_finite(draw):
    x, media = draw(arrays()), draw(MEDIA)
    x = x.clone()
    x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(
        st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    if media == codec.JSON:  # JSON's NaN/Infinity literals, as Python writes them
        return json.dumps({"inputs": {NAME: x.tolist()}}).encode(), media, {400}
    return codec.encode_inputs({NAME: x}, media), media, {400}


@st.composite
def wrong_dtype(draw):
    media = draw(st.sampled_from([codec.TENSORS, codec.NPZ]))
    x = draw(arrays()).clamp(-100, 100)
    if media == codec.TENSORS:
        dt = draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.uint8, torch.bool, torch.int8]))
        return codec.encode_inputs({NAME: x.to(dt)}, media), media, {422}
    dt = draw(st.sampled_from(["<f8", "<f2", "<i8", "<i4", "|u1", "|b1", "<c8", "<U3"]))
    buf = io.BytesIO()
    np.savez(buf, **{NAME: x.numpy().astype(dt)})
    return buf.getvalue(), media, {422}


@st.composite
def wrong_shape(draw):
    shape = draw(st.sampled_from([(1, 7), (2, 9), (8,), (1, 8, 1), (1, 1, 8), (0, 8), ()]))
    x = torch.zeros(shape)
    media = draw(MEDIA)
    return codec.encode_inputs({NAME: x}, media), media, {422, 400}


@st.composite
def nested(draw):
    n = draw(st.integers(5, 20000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    closed = draw(st.booleans())
    body = b'{"inputs": ' + opener * n + b"0" + (closer * n if closed else b"") + b"}"
    return body, codec.JSON, {400}


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=40)


@st.composite
def json_junk(draw):
    junk = draw(JUNK)
    doc = draw(st.sampled_from(["raw", "inputs", "named"]))
    value = junk if doc == "raw" else {"inputs": junk} if doc == "inputs" else \
        {"inputs": {NAME: junk}}
    return json.dumps(value).encode(), codec.JSON, {400, 422}


def zeros_npz(shape: tuple[int, ...]) -> bytes:
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z, \
            z.open(f"{NAME}.npy", "w", force_zip64=True) as f:
        f.write(hdr.getvalue())
        left, chunk = 4 * int(np.prod(shape)), bytes(1 << 20)
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)
    return out.getvalue()


@st.composite
def huge(draw):
    k = draw(st.integers(16, 20))  # 2**k rows of 8 float32: 2 to 32 MB, over the 1 MB cap
    kind = draw(st.sampled_from(["npz bomb", "npz wrong shape", "safetensors", "npz header"]))
    if kind == "npz bomb":
        return zeros_npz((2**k, 8)), codec.NPZ, {413}
    if kind == "npz wrong shape":
        return zeros_npz((1, 2**k)), codec.NPZ, {422}
    if kind == "safetensors":
        header = json.dumps({NAME: {"dtype": "F32", "shape": [2**k, 8],
                                    "data_offsets": [0, 2**k * 32]}}).encode()
        return len(header).to_bytes(8, "little") + header + bytes(64), codec.TENSORS, {400}
    hdr = io.BytesIO()  # a .npy header claiming far more than the member holds
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False,
                                               "shape": (2**k, 8)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{NAME}.npy", hdr.getvalue() + bytes(32))
    return buf.getvalue(), codec.NPZ, {400}


@st.composite
def truncated(draw):
    body, media, _ = draw(valid())
    cut = draw(st.integers(0, len(body) - 1))
    return body[:cut], media, {400, 422}


@st.composite
def junk_bytes(draw):
    media = draw(st.sampled_from([*codec.MEDIA_TYPES, "text/plain", "application/xml", ""]))
    body = draw(st.binary(max_size=300) | st.just(b"PK\x03\x04" + bytes(40)))
    return body, media, CLIENT_ERRORS


@st.composite
def too_large(draw):
    size = int(MAX_BODY_MB * 2**20) + draw(st.integers(1, 4096))
    return b"[" * size, draw(MEDIA), {413}


BODIES = st.one_of(valid(), non_finite(), wrong_dtype(), wrong_shape(), nested(), json_junk(),
                   huge(), truncated(), junk_bytes(), too_large())


# -- connections -----------------------------------------------------------------------------

def partial_body() -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"inputs": {"' + NAME.encode() + b'": [[')


def stalled(port: int, half_close: bool, seen: list) -> None:
    """A body that stops: the server answers 408 within the read timeout and closes. With
    ``half_close`` the client shuts its sending side mid-body: the request can never complete,
    the server closes at once (counted as a hang-up, 499)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S + 10) as s:
        s.sendall(partial_body())
        if half_close:
            s.shutdown(socket.SHUT_WR)
        raw = read_until_closed(s)
    if half_close:
        seen.append((499, raw))
        return
    head, _, body = raw.partition(b"\r\n\r\n")
    seen.append((int(head.split()[1]), json.loads(body)["error"]))


def abandoned(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(partial_body())
        time.sleep(0.1)


def check_typed(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["error"].endswith("Error"), body
    return body


def test_fuzz_and_soak(artifact):
    art = mo.load_artifact(artifact)
    assert [s.name for s in art.inputs] == [NAME]
    runner = load_runner(art, "onnxruntime")
    inflate_cap = int(MAX_BODY_MB * 2**20) * codec.NPZ_INFLATE_FACTOR
    sent: Counter[int] = Counter()  # what the client got from /predict, by status
    t0 = time.monotonic()

    def matches_runner(r: httpx.Response, x: torch.Tensor) -> None:
        want = runner(x)
        got = codec.decode_outputs(r.content, r.headers["content-type"])
        got = got["output"] if isinstance(got, dict) else torch.tensor(got)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    with ServeProcess(artifact, "--max-body-mb", str(MAX_BODY_MB), "--read-timeout-s",
                      str(READ_TIMEOUT_S), "--stats-interval-s", "0", "--max-batch-size", "8",
                      "--cache-size", "32") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(20):  # warm: the allocator's steady state
            x = torch.randn(2, 8)
            r = client.post("/predict", content=codec.encode_inputs({NAME: x}),
                            headers={"content-type": codec.TENSORS})
            assert r.status_code == 200
            sent[200] += 1
        before = server.memory_mb()

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=BODIES)
        def one(case) -> None:
            body, media, expected = case
            r = client.post("/predict", content=body, headers={"content-type": media})
            sent[r.status_code] += 1
            if isinstance(expected, torch.Tensor):
                assert r.status_code == 200, (r.status_code, r.text[:500])
                matches_runner(r, expected)
                return
            if r.status_code == 200:  # junk that happens to be a valid request
                x, = codec.decode_inputs(body, media, art.inputs, inflate_cap)
                matches_runner(r, x)
                return
            err = check_typed(r)
            assert r.status_code in expected, (r.status_code, err, body[:200], media)

        one()
        fuzzed = time.monotonic()

        # connections: stalled, half-closed and abandoned ones while valid requests flow
        seen: list[tuple[int, str]] = []
        threads = [threading.Thread(target=stalled, args=(server.port, i < HALF_CLOSED, seen))
                   for i in range(STALLED + HALF_CLOSED)]
        threads += [threading.Thread(target=abandoned, args=(server.port,))
                    for _ in range(ABANDONED)]
        for t in threads:
            t.start()
        for i in range(STEADY):  # served meanwhile, each its own answer
            x = torch.randn(1, 8, generator=torch.Generator().manual_seed(i))
            r = client.post("/predict", json={"inputs": {NAME: x.tolist()}})
            assert r.status_code == 200, r.text
            matches_runner(r, x)
            sent[200] += 1
        for t in threads:
            t.join(READ_TIMEOUT_S + 15)
        assert Counter(seen) == {(408, "ReadTimeoutError"): STALLED,
                                 (499, b""): HALF_CLOSED}, seen
        sent[408] += STALLED
        sent[499] += ABANDONED + HALF_CLOSED  # the server's count: no answer came back

        deadline = time.monotonic() + 10
        while True:  # the abandoned ones are noticed asynchronously
            m = server.metrics()
            if m[("modelopt_serve_in_flight", ())] == 0 and m.get(
                    ("modelopt_serve_requests_total", (("status", "499"),))) == sent[499]:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.05)
        after = server.memory_mb()
        log = server.log()
    assert server.proc.returncode == 0, log[-3000:]
    runner.close()

    counted = {int(dict(labels)["status"]): v for (k, labels), v in m.items()
               if k == "modelopt_serve_requests_total"}
    assert counted == dict(sent), (counted, sent)
    assert m[("modelopt_serve_read_timeouts_total", ())] == STALLED
    assert sum(v for (k, _), v in m.items() if k == "modelopt_serve_errors_total") == \
        sum(v for s, v in sent.items() if s != 200)
    assert not [s for s in sent if s >= 500], sent  # no server errors for client garbage
    assert "Traceback" not in log, log[-3000:]
    # memory: bounded while refusing bombs and junk, flat after (allocator noise only)
    assert after["VmHWM"] - before["VmRSS"] < 96, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 48, (before, after)
    assert sent[200] > 40 and len(sent) >= 5, sent  # the fuzz reached both sides
    print(f"fuzz: {sum(sent.values())} requests {dict(sorted(sent.items()))} in "
          f"{fuzzed - t0:.1f} s, connections in {time.monotonic() - fuzzed:.1f} s; server MB "
          f"before {before}, after {after}")
