"""Bilinear resizing of uint8 images, bit for bit what OpenCV's ``cv2.resize(INTER_LINEAR)`` gives.

X-CLIP resizes with mmcv, i.e. OpenCV's bilinear interpolation on uint8 HWC images
(XCLIP_SPEC §3.4-3.5). Torch's and PIL's bilinear filters round differently and move the
recognition scores by 5e-4 to 1e-3, so this module reproduces OpenCV's fixed-point arithmetic
in numpy and the project needs no OpenCV at run time (``tests/test_xclip_data.py`` compares it
with ``cv2.resize`` when OpenCV is installed).

OpenCV's uint8 path, for an output of width w from a source of width W (rows alike):
- ``scale = 1 / (w / W)`` in double precision; for output column d the source position is
  ``f = float32((d + 0.5) * scale - 0.5)``, ``s = floor(f)``, ``f -= s`` (in float32).
- Columns: a position left of the first pixel (s < 0) or at/after the last one (s >= W - 1)
  becomes ``s`` = 0 or W - 1 with ``f = 0``. Rows keep their ``f``; their indices s, s + 1 are
  clamped into the image instead.
- Weights ``1 - f`` and ``f`` are scaled by 2048 and rounded half to even to integers.
- Horizontal pass in int32: ``h = a0 * src[s] + a1 * src[s + 1]`` (weights sum to about 2048).
- Vertical pass as OpenCV's SIMD kernel (its scalar tail is written to match):
  ``((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2``.
An exact 2x reduction, which OpenCV sends to its "area" code, gives the same numbers here.
"""
import numpy as np

_WEIGHT_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE, 11 fractional bits


def _positions(src, dst):
    """Source index s (int64 [dst]) and float32 fraction f of every output position."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    return s.astype(np.int64), (f - s).astype(np.float32)


def _weights(f):
    """Integer weights (int32 [n] each) of the first and second neighbour."""
    one = np.float32(1.0)
    scale = np.float32(_WEIGHT_SCALE)
    return np.rint((one - f) * scale).astype(np.int32), np.rint(f * scale).astype(np.int32)


def column_taps(src, dst):
    """Left/right source columns and their weights for a width ``src`` -> ``dst`` resize.

    Returns:
        (x0, x1, a0, a1): int64 [dst] indices and int32 [dst] weights.
    """
    s, f = _positions(src, dst)
    outside = (s < 0) | (s >= src - 1)
    f[outside] = 0.0
    s = np.clip(s, 0, src - 1)
    a0, a1 = _weights(f)
    return s, np.minimum(s + 1, src - 1), a0, a1


def row_taps(src, dst):
    """Upper/lower source rows (clamped into the image) and their weights for a height
    ``src`` -> ``dst`` resize; returns (y0, y1, b0, b1) like ``column_taps``."""
    s, f = _positions(src, dst)
    b0, b1 = _weights(f)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), b0, b1


def resize_linear(image, width, height):
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)`` for uint8 images.

    Only the source rows the output needs are read, so a large frame costs little more than
    its output (at most 2 * height source rows, widened to int32 at the output width).

    Args:
        image: uint8 array [H, W, C].
        width, height: output size (>= 1).
    Returns:
        uint8 array [height, width, C] (a new array, also when the size is unchanged).
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_linear takes uint8 [H, W, C] images, got {image.dtype} {image.shape}")
    src_h, src_w, channels = image.shape
    if (src_h, src_w) == (height, width):
        return image.copy()
    x0, x1, a0, a1 = column_taps(src_w, width)
    y0, y1, b0, b1 = row_taps(src_h, height)
    rows = np.unique(np.concatenate([y0, y1]))
    source = image[rows].reshape(len(rows), src_w * channels)  # (R, W*C): only the rows read
    # Rows flattened to W*C values: column x, channel c is value x*C + c; weights repeat per channel.
    horizontal = _weighted_columns(source, x0, a0, channels)  # (R, w*C) int32
    horizontal += _weighted_columns(source, x1, a1, channels)
    horizontal >>= 4
    out = _weighted_rows(horizontal, np.searchsorted(rows, y0), b0)  # (h, w*C)
    out += _weighted_rows(horizontal, np.searchsorted(rows, y1), b1)
    out += 2
    out >>= 2
    return out.astype(np.uint8).reshape(height, width, channels)


def _weighted_columns(source, columns, weights, channels):
    """int32 [R, w*C]: ``source`` values of the given columns (all channels) times their weight."""
    flat = (columns[:, None] * channels + np.arange(channels)).reshape(-1)
    taken = np.take(source, flat, axis=1).astype(np.int32)
    taken *= np.repeat(weights, channels)
    return taken


def _weighted_rows(horizontal, rows, weights):
    """int32 [h, w*C]: ``(weight * row) >> 16`` for the given rows of the horizontal pass."""
    taken = np.take(horizontal, rows, axis=0)
    taken *= weights[:, None]
    taken >>= 16
    return taken
