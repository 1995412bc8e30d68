"""Token means over the *global* batch, so that 1 and N processes compute the same loss.

A token-mean NLL computed per process (sum / this rank's answer tokens) and then averaged by
DDP / DeepSpeed (gradients are averaged over ranks) weighs every rank equally, whatever its
number of answer tokens: it is not the token mean over the whole batch that one process
computes. Dividing each rank's sum by the answer tokens of *all* ranks (all-reduced) and
multiplying by the number of ranks makes the averaged gradient, and the logged mean over
ranks, exactly the global token mean.
"""

from __future__ import annotations

import torch


def _world_size() -> int:
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


def global_token_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total`` (this rank's summed token losses) / the answer tokens of all ranks, times the number
    of ranks: what averaging over ranks turns into the global token mean. 0 when no rank has tokens.
    Every rank must call it at the same point (it all-reduces)."""
    world = _world_size()
    count = count.detach().to(device=total.device, dtype=torch.float32)
    if world > 1:
        count = count.clone()
        torch.distributed.all_reduce(count)
    return total * world / count.clamp(min=1)
