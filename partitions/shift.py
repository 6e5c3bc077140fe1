"""Per-client feature (covariate) shift: rotation and/or noise, applied once at partition time.

It works with every scheme: the shift belongs to a client's device or domain, so it is applied
to all of a client's examples (train, val and test alike). Only the per-client parameters are
cached with a partition; the shifted inputs are recomputed from the seed on load, instead of
caching a copy of x.
"""

from __future__ import annotations

import numpy as np

from partitions.spec import FeatureShiftSpec

CHUNK = 2048


def feature_shift_params(spec: FeatureShiftSpec, num_clients: int, gen: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-client rotation angle (degrees) and noise std (on the [0, 1] pixel scale)."""
    if spec.levels:
        level = gen.permutation(num_clients) % spec.levels
        frac = np.linspace(0.0, 1.0, spec.levels)[level] if spec.levels > 1 else np.zeros(num_clients)
        frac_rot, frac_noise = frac, frac
    else:
        frac_rot, frac_noise = gen.random(num_clients), gen.random(num_clients)
    degrees = frac_rot * spec.max_degrees if "rotation" in spec.kind else np.zeros(num_clients)
    noise = frac_noise * spec.max_noise_std if "noise" in spec.kind else np.zeros(num_clients)
    return {"degrees": degrees, "noise_std": noise}


def apply_feature_shift(x: np.ndarray, owner: np.ndarray, degrees: np.ndarray, noise_std: np.ndarray,
                        gen: np.random.Generator) -> np.ndarray:
    """A copy of x in which every example is rotated / noised with its client's parameters.

    Vectorized over examples: every example gets its own affine matrix (its client's angle)
    and one `grid_sample` call transforms a chunk of examples at once. dtype is kept (uint8 is
    rounded and clipped to 0..255). Examples of no client are left unchanged."""
    import torch
    import torch.nn.functional as F

    out = x.copy()
    is_uint8 = x.dtype == np.uint8
    scale = 255.0 if is_uint8 else 1.0
    todo_rot = np.flatnonzero((owner >= 0) & (degrees[np.maximum(owner, 0)] != 0))
    if len(todo_rot) and x.ndim != 4:
        raise ValueError(f"feature_shift rotation needs image data (N, C, H, W); inputs have shape {x.shape}")
    todo_noise = np.flatnonzero((owner >= 0) & (noise_std[np.maximum(owner, 0)] > 0))
    for start in range(0, len(todo_rot), CHUNK):
        idx = todo_rot[start : start + CHUNK]
        rad = torch.as_tensor(np.deg2rad(degrees[owner[idx]]), dtype=torch.float32)
        cos, sin = torch.cos(rad), torch.sin(rad)
        theta = torch.zeros(len(idx), 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        batch = torch.from_numpy(np.ascontiguousarray(out[idx])).float()
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        rotated = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[idx] = _cast(rotated.numpy(), out.dtype)
    for start in range(0, len(todo_noise), CHUNK):
        idx = todo_noise[start : start + CHUNK]
        sigma = (noise_std[owner[idx]] * scale).astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
        noisy = out[idx].astype(np.float32) + gen.standard_normal((len(idx), *x.shape[1:]), dtype=np.float32) * sigma
        out[idx] = _cast(noisy, out.dtype)
    return out


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(dtype)
