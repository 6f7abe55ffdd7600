"""Small differentiable image operators shared by the networks and the losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sobel", "sobel_magnitude"]

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel derivatives with zero padding (the convention of the papers' losses).

    Args:
        x: ``(B, C, H, W)``.
    Returns:
        ``(gx, gy)``, each ``(B, C, H, W)``; ``gx`` responds to horizontal change
        (kernel ``[[-1,0,1],[-2,0,2],[-1,0,1]]``), ``gy`` is its transpose.
    """
    c = x.shape[1]
    kx = torch.tensor(_SOBEL_X, dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(x, kernels, padding=1, groups=c)
    return g[:, 0::2], g[:, 1::2]


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """L1 Sobel gradient magnitude ``|gx| + |gy|``: ``(B, C, H, W) -> (B, C, H, W)``."""
    gx, gy = sobel(x)
    return gx.abs() + gy.abs()
