"""Runners given bad input (issue 10, item 9).

- every backend available here: ``close()`` is idempotent, frees the runtime, and a call
  afterwards raises ``RunnerClosedError`` (also after ``with``);
- bad devices for ``torch`` / ``torch.compile``: a malformed string is a ``ConfigError``, a
  device the machine lacks a ``BackendUnavailableError``, both at load time, never torch's
  raw ``RuntimeError`` / ``AssertionError``;
- ``num_threads`` changes torch's thread count only while a call runs, and restores it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelopt_core as mo

PM = mo.get_plugin_manager()
BACKENDS = [i.name for i in PM.components("backend")]
TORCH_BACKENDS = ["torch", "torch.compile"]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture
def sess() -> mo.Session:
    return mo.Session(_net(), (torch.randn(2, 4),), progress=False)


def _artifact_for(s: mo.Session, backend: str) -> mo.ModelArtifact:
    cls = PM.get("backend", backend).cls
    ok, why = cls.availability()
    if not ok:
        pytest.skip(f"backend {backend!r} unavailable here: {why}")
    if "torch" in cls.accepts:
        return s.original
    for fmt in cls.accepts:
        try:
            for info in PM.export_path("torch", fmt):
                if not info.cls.availability()[0]:
                    raise mo.BackendUnavailableError(info.name)
        except (mo.NoExportPathError, mo.BackendUnavailableError):
            continue
        return s.export(fmt)
    pytest.skip(f"no artifact format of {cls.accepts} can be made here")


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_is_idempotent_and_later_calls_raise(sess, backend):
    art = _artifact_for(sess, backend)
    opts = {"compiler": "eager"} if backend == "torch.compile" else {}  # no Inductor build
    x = torch.randn(2, 4)
    runner = sess.runner(backend, art, **opts)
    assert runner.closed is False
    with sess.runner("torch", sess.original) as ref:
        torch.testing.assert_close(runner(x), ref(x), rtol=1e-3, atol=1e-4)
    runner.close()
    assert runner.closed is True
    runner.close()  # idempotent: no error, nothing released twice
    with pytest.raises(mo.RunnerClosedError, match="closed"):
        runner(x)
    for attr in ("module", "session", "context", "engine"):  # the runtime was let go
        if hasattr(runner, attr):
            assert getattr(runner, attr) is None, f"{backend}: runner.{attr} kept after close"
    with sess.runner(backend, art, **opts) as r:
        r(x)
    assert r.closed
    with pytest.raises(mo.RunnerClosedError):
        r(x)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("device", ["banana", "CPU", "cuda:x", "cuda:-1", "meta", ""])
def test_malformed_device_is_a_config_error_at_load(sess, backend, device):
    with pytest.raises(mo.ConfigError, match=f"backend '{backend}'.*device"):
        sess.runner(backend, device=device)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_session_device_is_checked_like_the_option(backend):
    s = mo.Session(_net(), (torch.randn(2, 4),), device="banana", progress=False)
    with pytest.raises(mo.ConfigError, match="'banana'"):
        s.runner(backend)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_backend_unavailable_at_load(sess, backend, device):
    with pytest.raises(mo.BackendUnavailableError,
                       match="torch was not compiled with CUDA / no CUDA device"):
        sess.runner(backend, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_runs_when_present(sess):
    x = torch.randn(2, 4)
    with sess.runner("torch", device="cuda") as r, sess.runner("torch") as ref:
        y = r(x)
        assert y.device.type == "cpu" or y.is_cuda
        torch.testing.assert_close(y.cpu(), ref(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_cuda_index_past_the_device_count_is_unavailable(sess, backend):
    with pytest.raises(mo.BackendUnavailableError, match="cuda:99"):
        sess.runner(backend, device="cuda:99")


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_device_the_build_lacks_is_unavailable(sess, backend):
    lacking = next((d for d in ("mps", "xpu") if not getattr(torch, d, None)
                    or not getattr(torch, d).is_available()), None)
    if lacking is None:
        pytest.skip("this torch build has both mps and xpu")
    with pytest.raises(mo.BackendUnavailableError, match=f"'{lacking}'"):
        sess.runner(backend, device=lacking)


class ThreadProbe(nn.Module):
    """Records torch's thread count seen inside forward; raises when asked to."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen: list[int] = []
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        if self.fail:
            raise ValueError("probe failure")
        return self.lin(x)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_num_threads_is_scoped_to_each_call(backend):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    s = mo.Session(ThreadProbe().eval(), (torch.randn(2, 4),), progress=False)
    opts = {"compiler": "eager"} if backend == "torch.compile" else {}
    try:
        runner = s.runner(backend, num_threads=want, **opts)
        assert torch.get_num_threads() == before, "loading changed the process thread count"
        probe = runner.module._orig_mod if hasattr(runner.module, "_orig_mod") \
            else runner.module
        runner(torch.randn(2, 4))
        runner(torch.randn(2, 4))
        assert probe.seen and set(probe.seen) == {want}
        assert torch.get_num_threads() == before, "a call left its thread count behind"
        probe.fail = True
        with pytest.raises(ValueError, match="probe failure"):
            runner(torch.randn(2, 4))
        assert torch.get_num_threads() == before, "a failing call left its thread count"
        with s.runner(backend, **opts) as plain:  # no option: the count is not touched
            probe2 = plain.module._orig_mod if hasattr(plain.module, "_orig_mod") \
                else plain.module
            plain(torch.randn(2, 4))
        assert probe2.seen == [before]
    finally:
        torch.set_num_threads(before)
