"""The data `invjax.measure` reads, on the host, K batches at a time.

An (N, H, W, C) array (`ArraySource`: NumPy, a memory map, or a `jax.Array`
sliced where it lies) or any batch source (`StreamSource`: an iterable of
``images``, ``(images, labels)`` or ``{"image", "label"}`` batches of at most
B samples) becomes a sequence of `Chunk`s of K batches, padded and masked,
never a copy of the whole dataset. The checks of images and labels live
here too, so that an array and a stream fail with the same messages.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# A chunk holds at most _MAX_CHUNK batches and, where B allows, about
# _CHUNK_IMAGES images: enough to hide the per-step dispatch, small next to
# the activations of one batch × T that the step holds anyway.
_MAX_CHUNK = 8
_CHUNK_IMAGES = 1024
# Rows per slice when the host checks an in-memory array for NaN/inf: a
# bounded temporary instead of a boolean copy of the whole dataset.
_CHECK_ROWS = 4096


def check_images(images: Any) -> Any:
  shape = getattr(images, "shape", None)
  if shape is None or not isinstance(images, (np.ndarray, jax.Array)):
    images = np.asarray(images)
    shape = images.shape
  if len(shape) != 4:
    raise ValueError(
        f"images must have shape (N, H, W, C) (rank 4), got rank {len(shape)} "
        f"with shape {tuple(shape)}")
  if shape[0] == 0:
    raise ValueError("images is empty: the dataset has no samples (N = 0)")
  if min(shape[1:]) == 0:
    raise ValueError(f"images has an empty spatial/channel axis: {shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"images must be floating point, got dtype {images.dtype}; convert "
        "them, e.g. images.astype(np.float32) / 255")
  if isinstance(images, np.ndarray):
    bad = sum(
        int(np.size(part) - np.count_nonzero(np.isfinite(part)))
        for part in (images[i:i + _CHECK_ROWS]
                     for i in range(0, shape[0], _CHECK_ROWS)))
  else:
    bad = int(jnp.size(images) - jnp.sum(jnp.isfinite(images)))
  if bad:
    raise ValueError(f"images contain {bad} non-finite values (NaN or inf)")
  warn_layout(images)
  return images


def warn_layout(images: Any) -> None:
  """Warns about images that look channels-first or unscaled 0..255 pixels.

  Neither is an error: a (N, 3, 32, 32) array is a valid stack of 3×32
  "images", and the warps are linear with zero padding, so they treat any
  value range alike. But both are far more often a mistake, which would
  rotate the wrong axes or feed a network pixels 255× what it was trained on.
  """
  n, h, w, c = images.shape
  if h in (1, 3) and c > 4:
    warnings.warn(
        f"images have shape {tuple(images.shape)}, which looks channels-first "
        "(N, C, H, W); invjax expects (N, H, W, C) and would transform the "
        "wrong axes: use images.transpose(0, 2, 3, 1)", UserWarning,
        stacklevel=4)
  sample = np.asarray(images[:256], np.float32)
  if (sample.min() >= 0 and 1.5 < sample.max() <= 255 and
      np.all(sample == np.round(sample))):
    warnings.warn(
        "images hold whole numbers up to 255, like unscaled pixels; invjax "
        "measures what it is given, but networks are usually trained on "
        "images / 255 (or standardized ones): scale them the way the model "
        "expects", UserWarning, stacklevel=4)


def check_labels(labels: Any, n: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(
        f"labels must have shape (N,) = ({n},), got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  return labels


def class_index(labels: np.ndarray, classes: np.ndarray,
                 where: str) -> np.ndarray:
  """(M,) int32 positions of `labels` in the sorted `classes`.

  Raises:
    ValueError: naming the first label that is not one of `classes`.
  """
  index = np.searchsorted(classes, labels)
  inside = index < len(classes)
  inside[inside] = classes[index[inside]] == labels[inside]
  if not inside.all():
    raise ValueError(
        f"label {labels[~inside][0]} {where} is not one of classes="
        f"{classes.tolist()}")
  return index.astype(np.int32)


def chunk_batches(b: int, num_batches: int | None) -> int:
  """K, the batches per compiled step.

  With the number of batches known, K is balanced so that the last chunk of
  a pass pads fewer empty batches than there are chunks (not up to K − 1):
  a dataset of 4 batches is one chunk of 4, one of 9 is two chunks of 5.
  """
  k = max(1, min(_MAX_CHUNK, _CHUNK_IMAGES // b))
  if num_batches:
    k = math.ceil(num_batches / math.ceil(num_batches / k))
  return k


class Chunk(NamedTuple):
  """K batches of B samples, read on the host, not yet on the device."""
  images: Any                  # (K, B, H, W, C), NumPy or a jax.Array
  mask: np.ndarray             # (K, B) bool: False for padding
  labels: np.ndarray | None    # (K, B) int32 (class indices when stratified)
  batches: int                 # batches holding a sample: progress counts


def _empty_chunk(k: int, b: int, hwc: tuple[int, ...], dtype: Any,
                 has_labels: bool) -> Chunk:
  """A chunk of padding only, for a process whose part of the data is over."""
  return Chunk(np.zeros((k, b) + tuple(hwc), dtype), np.zeros((k, b), bool),
               np.zeros((k, b), np.int32) if has_labels else None, 0)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _take_rows(images: jax.Array, start: jax.Array, k: int,
               b: int) -> jax.Array:
  """Rows start .. start + K·B of an on-device array as (K, B, H, W, C).

  Rows past the end repeat the last one (the mask leaves them out); start is
  traced, so one program serves every chunk.
  """
  rows = jnp.minimum(start + jnp.arange(k * b), images.shape[0] - 1)
  return images[rows].reshape((k, b) + images.shape[1:])


class ArraySource:
  """An (N, H, W, C) array read in chunks of K batches; N is known up front."""

  one_shot = False

  def __init__(self, images: Any, labels: np.ndarray | None, b: int):
    self.images, self.labels, self.b = images, labels, b
    self.n = int(images.shape[0])
    self.num_batches = math.ceil(self.n / b)
    self.k = chunk_batches(b, self.num_batches)

  def chunks(self, g: int, skip: int = 0) -> Iterator[Chunk]:
    """The chunks of pass g, from chunk ``skip`` on (a resumed run)."""
    del g  # every pass reads the same rows
    k, b, n = self.k, self.b, self.n
    size = k * b
    for start in range(skip * size, self.num_batches * b, size):
      # < 0 past this process's part of a multi-process run: all padding.
      real = max(0, min(size, n - start))
      mask = (np.arange(size) < real).reshape(k, b)
      # Padding rows repeat the last sample: finite images, masked out.
      rows = np.minimum(np.arange(start, start + size), n - 1)
      if isinstance(self.images, jax.Array):
        imgs = _take_rows(self.images, np.int32(start), k, b)
      elif real == size:
        imgs = self.images[start:start + size].reshape(
            (k, b) + self.images.shape[1:])        # a view: no host copy
      else:
        imgs = np.asarray(self.images[rows]).reshape(
            (k, b) + self.images.shape[1:])
      labels = None if self.labels is None else self.labels[rows].reshape(k, b)
      yield Chunk(imgs, mask, labels, math.ceil(real / b))

  def align(self, num_batches: int, k: int) -> None:
    """Steps through num_batches batches, K at a time (several processes)."""
    self.num_batches, self.k = num_batches, k

  def empty_chunk(self) -> Chunk:
    return _empty_chunk(self.k, self.b, self.images.shape[1:],
                        self.images.dtype, self.labels is not None)

  def end_pass(self, g: int) -> None:
    del g


def _split_batch(item: Any) -> tuple[Any, Any]:
  """(images, labels or None) of one item of a batch source."""
  if isinstance(item, Mapping):
    keys = [k for k in ("image", "images") if k in item]
    if not keys:
      raise ValueError(
          "a batch given as a dict needs an 'image' or 'images' entry, got "
          f"keys {sorted(item)}")
    label_keys = [k for k in ("label", "labels") if k in item]
    return item[keys[0]], item[label_keys[0]] if label_keys else None
  if isinstance(item, (tuple, list)):
    if len(item) != 2:
      raise ValueError(
          "a batch given as a tuple must be (images, labels), got "
          f"{len(item)} entries")
    return item[0], item[1]
  return item, None


class StreamSource:
  """A batch source read K batches at a time; N is counted as it goes by.

  Every pass but the first calls ``iter(data)`` again. The sample count (and
  the class sizes, stratified) of each pass is compared with the first's:
  a source must yield the same samples every pass, in any order.
  """

  def __init__(self, data: Any, b: int, stratify: bool,
               classes: np.ndarray | None):
    self.data, self.b = data, b
    # Only one iter() for the first pass: a loader may start workers.
    self._first = iter(data)
    self.one_shot = self._first is data
    try:
      first = next(self._first)
    except StopIteration:
      raise ValueError("images is empty: the batch source yielded no "
                       "batch") from None
    images, labels = _split_batch(first)
    images = np.asarray(images)
    # What a resumed run checks the source against (`resume`).
    self.first_batch = (images, None if labels is None else np.asarray(labels))
    if images.ndim != 4 or min(images.shape[1:], default=0) == 0:
      raise ValueError(
          "each batch must be (B, H, W, C) images (rank 4), got shape "
          f"{images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(
          f"images must be floating point, got dtype {images.dtype}; convert "
          "them, e.g. images.astype(np.float32) / 255")
    self.hwc, self.dtype = images.shape[1:], images.dtype
    self.has_labels = labels is not None
    self.stratify, self.classes = stratify, classes
    self._pending = first
    warn_layout(images)
    length = getattr(data, "__len__", None)
    self.num_batches = None
    if length is not None and not self.one_shot:
      try:
        self.num_batches = int(length()) or None
      except TypeError:   # e.g. a tf.data wrapper of unknown cardinality
        pass
    self.k = chunk_batches(b, self.num_batches)
    self.n = None                       # samples, known after pass 0
    self.sizes = None                   # (classes,) samples per class
    self._seen = {}                     # per pass: (batches, n, sizes)

  def _batches(self, g: int) -> Iterator[tuple[int, Any]]:
    if g == 0:
      it, pending = self._first, self._pending
      self._first = self._pending = None
      yield 0, pending
      start = 1
    else:
      it, start = iter(self.data), 0
    for i, item in enumerate(it, start):
      yield i, item

  def _read(self, i: int, item: Any) -> tuple[np.ndarray, np.ndarray | None]:
    images, labels = _split_batch(item)
    images = np.asarray(images)
    where = f"of batch {i}"
    if images.ndim != 4 or images.shape[1:] != self.hwc:
      raise ValueError(
          f"batch {i} has images of shape {images.shape}; every batch must "
          f"be (B, {', '.join(map(str, self.hwc))}) like the first")
    if images.shape[0] > self.b:
      raise ValueError(
          f"batch {i} holds {images.shape[0]} samples, more than batch_size="
          f"{self.b}: a source must yield batches of at most batch_size")
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f"batch {i}: images must be floating point, got dtype "
                       f"{images.dtype}")
    bad = int(images.size - np.count_nonzero(np.isfinite(images)))
    if bad:
      raise ValueError(
          f"batch {i}: images contain {bad} non-finite values (NaN or inf)")
    if (labels is None) != (not self.has_labels):
      raise ValueError(
          f"batch {i} {'has no' if labels is None else 'has'} labels, unlike "
          "the first batch: yield (images, labels) every time or never")
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != images.shape[:1]:
        raise ValueError(
            f"batch {i}: labels must have shape (B,) = ({images.shape[0]},), "
            f"got {labels.shape}")
      if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"batch {i}: labels must be integers, got dtype {labels.dtype}")
      labels = (class_index(labels, self.classes, where) if self.stratify
                else labels.astype(np.int32))
    return images, labels

  def chunks(self, g: int, skip: int = 0) -> Iterator[Chunk]:
    """The chunks of pass g; the first ``skip`` are read but not yielded.

    A resumed run skips the chunks its checkpoint holds: they are read again
    (the source has no other way to its position) and counted, so the
    checks at the end of the pass see the whole pass.
    """
    k, b = self.k, self.b
    n, batches = 0, 0
    sizes = np.zeros(len(self.classes) if self.stratify else 0, np.int64)

    def empty():
      # A fresh buffer each chunk: the device may still be reading the last
      # one (on CPU, device_put may even alias it).
      return (np.zeros((k, b) + self.hwc, self.dtype),
              np.zeros((k, b), bool),
              np.zeros((k, b), np.int32) if self.has_labels else None)

    imgs, mask, labels = empty()
    slot = 0
    for i, item in self._batches(g):
      x, y = self._read(i, item)
      m = x.shape[0]
      if m == 0:
        continue
      imgs[slot, :m] = x
      imgs[slot, m:] = x[0]         # finite padding, masked out
      mask[slot, :m] = True
      if y is not None:
        labels[slot, :m] = y
        if self.stratify:
          sizes += np.bincount(y, minlength=len(sizes))
      n += m
      batches += 1
      slot += 1
      if slot == k:
        if skip:
          skip -= 1
        else:
          yield Chunk(imgs, mask, labels, k)
          imgs, mask, labels = empty()
        slot = 0
    if slot and not skip:
      imgs[slot:] = imgs[0, 0]
      yield Chunk(imgs, mask, labels, slot)
    self._seen[g] = (batches, n, sizes)

  def empty_chunk(self) -> Chunk:
    return _empty_chunk(self.k, self.b, self.hwc, self.dtype, self.has_labels)

  def restore(self, n: int, sizes: Any, num_batches: int) -> None:
    """Sets what pass 0 counted, for a run resumed past it."""
    self.n, self.num_batches = n, num_batches
    self.sizes = np.asarray(sizes if sizes is not None else [], np.int64)

  def end_pass(self, g: int) -> None:
    batches, n, sizes = self._seen[g]
    if g == 0:
      if n == 0:
        raise ValueError("images is empty: the batch source yielded no "
                         "samples (N = 0)")
      self.n, self.sizes, self.num_batches = n, sizes, batches
      return
    if n != self.n or not np.array_equal(sizes, self.sizes):
      raise ValueError(
          f"the batch source yielded {n} samples in pass {g + 1} but "
          f"{self.n} in pass 1: a multi-pass measure needs the same samples "
          "every pass (any order); check that iter(data) starts over")


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  """Pads axis 0 to ``rows`` with copies of row 0 (finite, to be masked)."""
  extra = rows - a.shape[0]
  if extra <= 0:
    return a
  return np.concatenate([a, np.repeat(a[:1], extra, axis=0)], axis=0)


def padded_batches(arrays: tuple[np.ndarray, ...], size: int
                   ) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
  """Batches of ``size`` rows of arrays of equal length, for host loops.

  Every batch has ``size`` rows (one compiled program for all), the last
  one padded with copies of row 0; yields ``(batch arrays, (size,) mask)``
  with the mask False on padding. `invjax.measure` reads its data through
  `ArraySource` instead, K batches per step.
  """
  n = arrays[0].shape[0]
  for start in range(0, n, size):
    part = tuple(pad_rows(np.asarray(a[start:start + size]), size)
                 for a in arrays)
    yield part, np.arange(size) < min(size, n - start)


def is_array(data: Any) -> bool:
  """An (N, H, W, C) array (anything with a shape), not a batch source."""
  return hasattr(data, "shape") or not hasattr(data, "__iter__")
