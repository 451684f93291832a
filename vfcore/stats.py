"""Streaming per-channel moments of activations, merged batch by batch.

Activation matching, ZipIt! and CCA need the joint covariance of two models' units; REPAIR,
RESCALE and the post-pruning normalisation need each channel's mean and standard deviation. Both
come from one accumulator. Channels are dim 1; every batch element and spatial position is one
sample. Each batch is centred on a shift (the first batch's mean), and its sums are taken in
float64 over chunks of rows, so the result keeps float64 precision without a float64 copy of a
whole batch of activations.
"""

from __future__ import annotations

import torch

CHUNK = 1 << 15
"""Rows converted to float64 at a time."""


def _sums(d: torch.Tensor, covariance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the rows of `d` and of their squares (or outer products), in float64."""
    total = torch.zeros(d.shape[1], dtype=torch.float64, device=d.device)
    second = torch.zeros((d.shape[1],) * (2 if covariance else 1), dtype=torch.float64,
                         device=d.device)
    for chunk in d.split(CHUNK):
        c = chunk.double()
        total += c.sum(0)
        second += c.T @ c if covariance else (c * c).sum(0)
    return total, second


class Moments:
    """Per-channel mean and variance (and, with `covariance`, the full covariance) of a stream of
    (N, C, *spatial) tensors. Variances are population variances (divided by the count)."""

    def __init__(self, covariance: bool = False):
        self.covariance = covariance
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.second: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError("channel moments need a tensor with channels on dim 1")
        x = x.detach()
        channels = x.shape[1]
        if self.shift is not None and self.shift.numel() != channels:
            raise ValueError(f"channel count changed between batches: {self.shift.numel()} vs "
                             f"{channels}")
        rows = x.movedim(1, -1).reshape(-1, channels)
        if self.shift is None:
            self.shift = rows.sum(0, dtype=torch.float64) / rows.shape[0]
            self.total = torch.zeros_like(self.shift)
            self.second = torch.zeros(
                (channels, channels) if self.covariance else (channels,), dtype=torch.float64,
                device=x.device)
        total, second = _sums(rows - self.shift.to(rows.dtype), self.covariance)
        self.count += rows.shape[0]
        self.total += total
        self.second += second

    def _n(self) -> int:
        if self.count == 0:
            raise ValueError("no samples were added to these moments")
        return self.count

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self._n()

    @property
    def var(self) -> torch.Tensor:
        m = self.total / self._n()
        second = self.second.diagonal() if self.covariance else self.second
        return (second / self._n() - m * m).clamp_min(0.0)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @property
    def cov(self) -> torch.Tensor:
        """(C, C) population covariance; needs `covariance=True`."""
        if not self.covariance:
            raise ValueError("these moments keep per-channel variances only; build them with "
                             "covariance=True")
        m = self.total / self._n()
        return self.second / self._n() - torch.outer(m, m)

    @property
    def corr(self) -> torch.Tensor:
        """(C, C) Pearson correlation; dead units get correlation 0.

        The floor on std_i * std_j is relative (1e-12 of the largest variance) rather than an
        absolute constant, so correlations do not depend on the features' scale (the paper's
        deep linear nets have tiny features).
        """
        cov = self.cov
        var = cov.diagonal().clamp_min(0)
        std = var.sqrt()
        floor = max(1e-12 * float(var.max()), torch.finfo(torch.float64).tiny)
        return cov / torch.outer(std, std).clamp_min(floor)
