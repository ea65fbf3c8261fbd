"""The normalisation scalar C of the recipe: inputs are divided by C so that E‖x/C‖² = 1.

One scalar for the whole dataset (not per token), estimated from a sample. Transcoders use
the RMS of the *input* for both input and target (App. B), which is the same formula
applied to the input sample.
"""

from __future__ import annotations

import numpy as np


def estimate_norm_scalar(sample: np.ndarray) -> float:
    """C = sqrt(mean_i ‖x_i‖²) over the rows of a sample (computed in float64).

    Args:
        sample: [N, d] raw activations (for a transcoder: its input rows).
    Returns:
        C, so that E‖x / C‖² = 1 on the sample.
    Raises:
        ValueError for an empty, non-finite or all-zero sample.
    """
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty [N, d] sample to estimate C, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the sample for estimating C contains NaN or Inf")
    c = float(np.sqrt(np.mean(np.sum(x * x, axis=1))))
    if c == 0.0:
        raise ValueError("the sample for estimating C is all zeros")
    return c
