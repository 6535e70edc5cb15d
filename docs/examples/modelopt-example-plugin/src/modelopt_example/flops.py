"""``example.flops``: floating-point operations of one forward pass on the session's example
inputs: counted by ``torch.utils.flop_counter.FlopCounterMode`` for torch artifacts, from the
layer list for the plugin's own ``example.npz`` format (what a search measures on its runtime).
Both count the matrix products and convolutions, 2 FLOPs per multiply-accumulate."""

from __future__ import annotations

import copy
from typing import Any

import torch

import modelopt_core as mo


class FlopsProfiler(mo.Profiler):
    """FLOPs (and MACs = FLOPs / 2) of one forward pass of a torch or example.npz artifact."""

    name = "example.flops"
    #: what profile() returns, as the reports show it (terminal table, report.md, report.html)
    columns = (mo.Column("gflops", "GFLOPs", "GFLOP", "{:.3f}", "lower"),
               mo.Column("macs", "MACs", "", "{:,}", "lower"))

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        """``{"gflops": ..., "macs": ...}`` for torch and example.npz artifacts; other formats
        report nothing."""
        from .npz import FORMAT, layer_macs

        if artifact.format not in ("torch", FORMAT):
            return {}
        if not ctx.example_inputs:
            raise mo.DataError(f"{self.name}: the session has no example_inputs to count.")
        if artifact.format == FORMAT:
            macs = layer_macs(artifact.model, ctx.example_inputs[0].detach().cpu().numpy())
            return {"gflops": 2 * macs / 1e9, "macs": macs}
        from torch.utils.flop_counter import FlopCounterMode

        model = copy.deepcopy(artifact.model).eval()  # never run the user's module itself
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(*ctx.example_inputs)
        flops = int(counter.get_total_flops())
        return {"gflops": flops / 1e9, "macs": flops // 2}
