"""Mixed precision for training, and peak-memory readings for the log.

``bf16``: the Transformer blocks (where the FLOPs are) run under ``torch.autocast`` in
bfloat16; everything that sees geometry or produces energies stays float32: the
coordinate and distance features, the attention-bias projection, the readout, the ZBL and
pair terms, and the sums over atoms. Positions enter as float32 leaves, so forces
(−∂E/∂x) and every loss term are float32; the weights (the optimiser's master copy) are
float32 throughout. Autocast is switched on and off around each block by forward hooks,
so the model code and its checkpoints are unchanged.
"""

from __future__ import annotations

import resource
from typing import Any, List, Tuple

import torch
from torch import nn


class BlockAutocast:
    """Run each module of ``blocks`` under ``torch.autocast(device_type, dtype)``; outputs
    are cast back to float32 (the residual stream between blocks stays float32)."""

    def __init__(self, blocks: nn.ModuleList, device_type: str, dtype: torch.dtype = torch.bfloat16) -> None:
        self.device_type = device_type
        self.dtype = dtype
        self._active: List[Any] = []
        self.handles = []
        for block in blocks:
            self.handles.append(block.register_forward_pre_hook(self._enter))
            self.handles.append(block.register_forward_hook(self._exit))

    def _enter(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        ctx = torch.autocast(self.device_type, dtype=self.dtype)
        ctx.__enter__()
        self._active.append(ctx)

    def _exit(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
        self._active.pop().__exit__(None, None, None)
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.float()
        return output

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far, MiB: CUDA max allocated on ``device``, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
