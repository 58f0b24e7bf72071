"""Weights for tests that compare two implementations: far from the init, so that a difference shows."""
from __future__ import annotations

import torch

from minimind_edu.model import MiniMind


def randomize(model: MiniMind, seed: int = 0, std: float = 0.05) -> MiniMind:
    """Weights far from the init (norm gains too), so a wrong eps, gain or rotation would show in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model.eval()
