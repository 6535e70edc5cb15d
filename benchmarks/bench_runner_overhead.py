"""Issue 24 item 7 benchmark: the per-call overhead of our runners over the runtime called
directly, on a tiny model (where the overhead is most of the time).

A two-layer MLP (16 -> 64 -> 16) is exported to OpenVINO IR and ONNX through a Session; at
batch 1 and 8, in one process, interleaved (``common.interleaved_p50``: short blocks
round-robin, a pause between blocks), this times:

- ``openvino direct``: ``InferRequest.infer([numpy])`` on a request of the same compiled
  model, the numpy input made once (OpenVINO's default call: it copies the input and returns
  copies of the outputs);
- ``openvino direct shared``: the same with ``share_inputs=True, share_outputs=True`` (no
  copy in or out: the floor, its outputs overwritten by the next call);
- ``OpenVinoRunner``: ``runner(torch_tensor)`` (torch in, torch out, thread-safe pool);
- ``OpenVinoRunner batch=N``: the runner compiled for the static batch (``batch=N``);
- ``ort direct``: ``InferenceSession.run(None, {name: numpy})``;
- ``OrtRunner``: ``runner(torch_tensor)``.

Each figure is the median over ``--repeats`` repeats of the per-call p50 in microseconds,
with the range; ``overhead`` is runner minus direct (medians). A shared machine makes these
noisy: compare figures of the same run only.

    python benchmarks/bench_runner_overhead.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_p50, write_results  # noqa: E402

import modelopt_core as mo  # noqa: E402


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 16)).eval()


def candidates(batch: int, threads: int, tmp: Path) -> tuple[dict[str, Callable[[], Any]],
                                                              list[Any]]:
    import openvino as ov
    import onnxruntime as ort

    model = tiny()
    x = torch.randn(batch, 16)
    s = mo.Session(model, (x,), progress=False)
    ov_art = s.export("openvino")
    onnx_art = mo.Session(model, (x,), progress=False).export("onnx", exporter="torchscript")
    runners = [s.runner("openvino", artifact=ov_art, inference_num_threads=threads),
               s.runner("onnxruntime", artifact=onnx_art, intra_op_num_threads=threads)]
    fns: dict[str, Callable[[], Any]] = {}
    xn = x.numpy()
    req = runners[0].compiled.create_infer_request()  # the runner's own compiled model
    fns["openvino direct"] = lambda: req.infer([xn])
    fns["openvino direct shared"] = lambda: req.infer([xn], share_inputs=True,
                                                      share_outputs=True)
    ov_runner = runners[0]
    fns["OpenVinoRunner"] = lambda: ov_runner(x)
    try:
        fixed = s.runner("openvino", artifact=ov_art, inference_num_threads=threads,
                         batch=batch)
    except mo.ModeloptError as e:  # no batch option (before this item)
        print(f"no batch=N runner: {e}")
        fixed = None
    if fixed is not None:
        runners.append(fixed)
        fns["OpenVinoRunner batch=N"] = lambda: fixed(x)
    sess = runners[1].session
    name = sess.get_inputs()[0].name
    fns["ort direct"] = lambda: sess.run(None, {name: xn})
    ort_runner = runners[1]
    fns["OrtRunner"] = lambda: ort_runner(x)
    del ov, ort
    return fns, runners


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    repeats = 2 if a.quick else a.repeats
    rounds = 400 if a.quick else 2000
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 8):
            fns, runners = candidates(batch, a.threads, Path(tmp))
            reps = [interleaved_p50(fns, rounds=rounds, warmup=50, block=50, pause_s=0.01)
                    for _ in range(repeats)]
            for r in runners:
                r.close()
            us = {k: sorted(1e3 * rep[k] for rep in reps) for k in fns}
            med = {k: statistics.median(v) for k, v in us.items()}
            for k, v in us.items():
                direct = "openvino direct" if k.startswith("OpenVino") else \
                    "ort direct" if k == "OrtRunner" else None
                table.append({"batch": batch, "candidate": k, "p50_us": med[k],
                              "range_us": f"{v[0]:.1f}-{v[-1]:.1f}",
                              "overhead_us": None if direct is None else med[k] - med[direct],
                              "vs_direct": None if direct is None else med[k] / med[direct]})
    write_results("runner_overhead", {"quick": a.quick, "threads": a.threads,
                                      "repeats": repeats, "rounds": rounds},
                  table, ["batch", "candidate", "p50_us", "range_us", "overhead_us",
                          "vs_direct"],
                  "Runner overhead vs the runtime called directly (tiny MLP, p50 per call)",
                  [f"threads {a.threads}, {repeats} repeats of {rounds} interleaved calls "
                   "each; p50_us: median of the repeats' p50 (range: min-max); shared "
                   "machine: noisy"])


if __name__ == "__main__":
    main()
