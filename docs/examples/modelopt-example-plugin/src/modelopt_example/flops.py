"""``example.flops``: floating-point operations of one forward pass, counted by
``torch.utils.flop_counter.FlopCounterMode`` on the session's example inputs."""

from __future__ import annotations

import copy
from typing import Any

import torch

import modelopt_core as mo


class FlopsProfiler(mo.Profiler):
    """FLOPs (and MACs = FLOPs / 2) of one forward pass of a torch artifact."""

    name = "example.flops"
    #: what profile() returns, as the reports show it (terminal table, report.md, report.html)
    columns = (mo.Column("gflops", "GFLOPs", "GFLOP", "{:.3f}", "lower"),
               mo.Column("macs", "MACs", "", "{:,}", "lower"))

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        """``{"gflops": ..., "macs": ...}`` for torch artifacts; other formats report nothing."""
        if artifact.format != "torch":
            return {}
        if not ctx.example_inputs:
            raise mo.DataError(f"{self.name}: the session has no example_inputs to count.")
        from torch.utils.flop_counter import FlopCounterMode

        model = copy.deepcopy(artifact.model).eval()  # never run the user's module itself
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(*ctx.example_inputs)
        flops = int(counter.get_total_flops())
        return {"gflops": flops / 1e9, "macs": flops // 2}
