"""The offline digits loader and the array utilities the experiments need.

`load_digits`: scikit-learn's bundled 8x8 digits, upsampled, as an offline
default that needs neither a download nor a data directory. Quiroga et al.
measure invariance on MNIST and CIFAR-10, standardised per channel, using
1,000 stratified test samples (10% of the test set); see `tmeasures.md`
section 4. Every loader (also `invjax._src.mnist`, `invjax._src.cifar10`)
returns host (NumPy) arrays ``(images, labels)``: float32 images ``(N, H, W,
C)`` in [0, 1] and int32 labels ``(N,)``. `batches` moves them to the device
one batch at a time.
"""

from __future__ import annotations

from typing import Iterator, Optional

import jax
import numpy as np

# ----------------------------------------------------------------------------
# scikit-learn digits (offline default).
# ----------------------------------------------------------------------------


def load_digits(*, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """Loads scikit-learn's bundled 8x8 handwritten digits, upsampled.

  The 1,797 images (UCI "Optical Recognition of Handwritten Digits", values
  0..16) ship with scikit-learn, so this loader needs no network and no data
  directory: the default for tests, examples and quick experiments.

  Images are scaled to [0, 1] (divided by 16) and resized with
  `jax.image.resize(method="linear")`: bilinear interpolation with
  half-pixel centres, antialiased when shrinking. Bilinear weights are convex,
  so values stay in [0, 1].

  Args:
    size: output height and width (28 matches MNIST; 8 keeps the originals).

  Returns:
    ``(images, labels)``: float32 ``(1797, size, size, 1)`` in [0, 1] and
    int32 ``(1797,)``.
  """
  # Imported lazily: scikit-learn is only needed for this offline dataset.
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  if size < 1:
    raise ValueError(f"size must be positive, got {size}.")
  digits = datasets.load_digits()
  images = np.asarray(digits.images, np.float32)[..., None] / 16.0
  if size != images.shape[1]:
    images = jax.image.resize(images, (len(images), size, size, 1), "linear")
    images = np.clip(np.asarray(images), 0.0, 1.0)
  return images.astype(np.float32), np.asarray(digits.target, np.int32)


# ----------------------------------------------------------------------------
# Preprocessing and iteration.
# ----------------------------------------------------------------------------


def standardize(
    images,
    *,
    mean=None,
    std=None,
):
  """Standardises images per channel: ``(x - mean) / std``.

  Quiroga et al. standardise MNIST and CIFAR-10 per channel (`tmeasures.md`
  section 4). Statistics are the population mean and standard deviation over
  every axis but the last, computed in float64 on the host; pass the
  training set's ``(mean, std)`` to standardise a test set the same way.

  Args:
    images: ``(..., C)`` float images (NumPy or JAX).
    mean: ``(C,)`` or scalar channel means; computed from ``images`` if None.
    std: ``(C,)`` or scalar channel standard deviations; computed if None.
      Channels with zero deviation are left unscaled (divided by 1).

  Returns:
    ``(standardized, (mean, std))`` with float32 ``(C,)`` statistics; the
    images keep their array type (NumPy stays NumPy).
  """
  axes = tuple(range(np.ndim(images) - 1))
  if mean is None:
    mean = np.mean(np.asarray(images, np.float64), axis=axes)
  if std is None:
    std = np.std(np.asarray(images, np.float64), axis=axes)
    std = np.where(std > 0, std, 1.0)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if isinstance(images, jax.Array):
    out = (images - mean) / std
  else:
    out = ((np.asarray(images, np.float32) - mean) / std).astype(np.float32)
  return out, (mean, std)


def stratified_indices(labels, n: int, *, seed: int) -> np.ndarray:
  """Indices of a class-stratified random subset of size ``n``.

  Each class ``c`` with ``N_c`` of the ``N`` samples gets the proportional
  quota ``n * N_c / N``, rounded by the largest-remainder (Hamilton) method:
  every class gets the floor, and the ``n - sum(floors)`` leftover slots go
  to the classes with the largest fractional parts, ties broken by the
  smaller label. Quotas are computed in exact integer arithmetic, so they do
  not depend on the seed or on floating point. Within each class the samples
  are drawn uniformly without replacement.

  Args:
    labels: ``(N,)`` integer labels.
    n: subset size, ``0 <= n <= N``.
    seed: seed for NumPy's generator choosing samples within a class.

  Returns:
    ``(n,)`` int64 indices into ``labels``, sorted ascending (so the subset
    keeps the dataset's order).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
  total = labels.shape[0]
  if not 0 <= n <= total:
    raise ValueError(f"n must be in [0, {total}], got {n}.")
  classes, inverse, counts = np.unique(labels, return_inverse=True,
                                       return_counts=True)
  floors, remainders = np.divmod(n * counts.astype(np.int64), total)
  leftover = n - int(floors.sum())
  # Largest remainder first; lexsort's last key is primary, and the class
  # position (ascending label) breaks ties deterministically.
  order = np.lexsort((np.arange(len(classes)), -remainders))
  quotas = floors.copy()
  quotas[order[:leftover]] += 1
  rng = np.random.default_rng(seed)
  chosen = []
  for c, quota in enumerate(quotas):
    members = np.flatnonzero(inverse == c)
    chosen.append(rng.choice(members, size=int(quota), replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_subset(images, labels, n: int, *, seed: int):
  """A class-stratified random subset of ``n`` samples.

  The papers measure invariance on 1,000 stratified test samples (10% of the
  test set; `tmeasures.md` section 4). See `stratified_indices` for the exact
  per-class allocation.

  Args:
    images: ``(N, ...)`` images.
    labels: ``(N,)`` integer labels.
    n: subset size.
    seed: sampling seed.

  Returns:
    ``(images[idx], labels[idx])`` in the dataset's original order.
  """
  idx = stratified_indices(labels, n, seed=seed)
  return images[idx], labels[idx]


def batches(
    images,
    labels,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> Iterator[tuple[jax.Array, Optional[jax.Array]]]:
  """Iterates once over ``(images, labels)`` in device-resident batches.

  The next batch is transferred (`jax.device_put`, asynchronous) while the
  caller works on the current one, so host-to-device copies overlap compute.

  Args:
    images: ``(N, ...)`` array (NumPy or JAX).
    labels: ``(N,)`` array, or None to yield ``(images_batch, None)``.
    batch_size: samples per batch.
    shuffle: visit samples in a random order.
    seed: seed for the shuffle (NumPy generator), so epochs are reproducible;
      pass a different seed per epoch for different orders.
    drop_remainder: skip a final batch smaller than ``batch_size``.

  Returns:
    An iterator of ``(images_batch, labels_batch)`` JAX arrays.
  """
  num = len(images)
  if labels is not None and len(labels) != num:
    raise ValueError(f"{num} images but {len(labels)} labels.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if shuffle:
    order = np.random.default_rng(seed).permutation(num)
  else:
    order = None
  stop = num - num % batch_size if drop_remainder else num
  starts = range(0, stop, batch_size)

  def take(start):
    if order is None:
      sel = slice(start, min(start + batch_size, num))
    else:
      sel = order[start:start + batch_size]
    return jax.device_put(
        (images[sel], None if labels is None else labels[sel]))

  def generate():
    pending = None
    for start in starts:
      nxt = take(start)
      if pending is not None:
        yield pending
      pending = nxt
    if pending is not None:
      yield pending

  return generate()
