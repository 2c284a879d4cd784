"""CIFAR-10, read from its published Python pickles without torchvision.

The pickles ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``,
read straight out of the tarball in memory or from an extracted directory;
Krizhevsky (2009), https://www.cs.toronto.edu/~kriz/cifar.html.
"""

from __future__ import annotations

import pathlib
import pickle
import tarfile
from typing import Optional, Sequence, Union

import numpy as np

from invjax._src.data_files import _check_labels
from invjax._src.data_files import _download
from invjax._src.data_files import PathLike
from invjax._src.data_files import resolve_data_dir

# ----------------------------------------------------------------------------
# Published metadata.
# ----------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR10_TARBALL = "cifar-10-python.tar.gz"
# A test-split-only tarball with the same inner layout; not published by the
# authors (no checksum), but accepted when found locally.
_CIFAR10_TEST_TARBALL = "cifar-10-test-python.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-py"
_TEST_TAR_CONTENT = frozenset({"test_batch", "batches.meta"})
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
_CIFAR10_BATCH_SIZE = 10_000

# ----------------------------------------------------------------------------
# CIFAR-10 (pickled batches).
# ----------------------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
  """Unpickler that only builds what CIFAR batches contain.

  Pickles can run arbitrary code; the batches need nothing beyond NumPy array
  reconstruction (and ``_codecs.encode`` for bytes written by Python 3), so
  everything else is refused.
  """

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"CIFAR-10 batch refers to {module}.{name}, which a genuine batch "
          "never does; refusing to load it.")
    return super().find_class(module, name)


def _unpickle(f) -> dict:
  # latin1 decodes the Python 2 pickles of the original release (NumPy's
  # recommendation for py2 arrays) and gives str keys for both old and new.
  obj = _BatchUnpickler(f, encoding="latin1").load()
  if not isinstance(obj, dict):
    raise ValueError("CIFAR-10 batch is not a dict.")
  return {k.decode("latin1") if isinstance(k, bytes) else k: v
          for k, v in obj.items()}


def _read_cifar_members(source: pathlib.Path,
                        names: Sequence[str]) -> dict[str, dict]:
  """Reads ``cifar-10-batches-py/<name>`` pickles from a tarball or dir."""
  wanted = set(names)
  out = {}
  if source.is_dir():
    for name in wanted:
      with open(source / name, "rb") as f:
        out[name] = _unpickle(f)
    return out
  # Stream through the gzip once, unpickling the members we need as we pass
  # them; nothing is extracted to disk.
  with tarfile.open(source, "r:gz") as tar:
    for member in tar:
      base = pathlib.PurePosixPath(member.name)
      if (member.isfile() and base.parent.name == _CIFAR10_DIR and
          base.name in wanted):
        f = tar.extractfile(member)
        out[base.name] = _unpickle(f)
        if len(out) == len(wanted):
          break
  return out


def _cifar_source(root: pathlib.Path, names: Sequence[str],
                  download: bool) -> pathlib.Path:
  """Finds an extracted dir or tarball holding every one of ``names``."""
  candidates = []
  for directory in (root / "cifar10", root):
    candidates.append(directory / _CIFAR10_DIR)
    candidates.append(directory / _CIFAR10_TARBALL)
    candidates.append(directory / _CIFAR10_TEST_TARBALL)
  for path in candidates:
    if path.is_dir():
      if all((path / n).is_file() for n in names):
        return path
    elif path.is_file():
      # Trust each tarball's name for its content rather than listing it
      # (listing decompresses the whole file); a wrong one fails on reading.
      if path.name == _CIFAR10_TARBALL or set(names) <= _TEST_TAR_CONTENT:
        return path
  dest = root / "cifar10" / _CIFAR10_TARBALL
  if not download:
    raise FileNotFoundError(
        f"CIFAR-10 batches {sorted(names)} not found: looked for "
        f"{_CIFAR10_TARBALL}, {_CIFAR10_TEST_TARBALL} or an extracted "
        f"{_CIFAR10_DIR}/ in {root / 'cifar10'} and {root}. Put "
        f"{_CIFAR10_TARBALL} (from {CIFAR10_URL}) in {root / 'cifar10'} or "
        "pass download=True.")
  _download([CIFAR10_URL], dest, CIFAR10_MD5)
  return dest


def _batch_names(split: str,
                 batches: Optional[Sequence[Union[str, int]]]) -> list[str]:
  if batches is None:
    if split == "train":
      return list(CIFAR10_TRAIN_BATCHES)
    if split == "test":
      return list(CIFAR10_TEST_BATCHES)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if isinstance(batches, (str, int)):
    batches = [batches]
  names = []
  for b in batches:
    name = f"data_batch_{b}" if isinstance(b, int) else str(b)
    if name not in CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES:
      raise ValueError(f"Unknown CIFAR-10 batch {b!r}; expected one of "
                       f"{CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES} or "
                       "an int 1..5.")
    if name in names:
      raise ValueError(f"CIFAR-10 batch {name} requested twice.")
    names.append(name)
  return names


def load_cifar10(
    split: str = "test",
    *,
    data_dir: Optional[PathLike] = None,
    batches: Optional[Sequence[Union[str, int]]] = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads CIFAR-10 (Krizhevsky, 2009) from the published Python batches.

  Sources, in order, in ``data_dir/cifar10/`` then ``data_dir/``: an
  extracted ``cifar-10-batches-py/`` directory, the published
  ``cifar-10-python.tar.gz``, or a test-only ``cifar-10-test-python.tar.gz``
  with the same layout. Tarballs are read in memory, never extracted. If none
  holds the requested batches and ``download=True``, the published tarball is
  downloaded (170 MB) and its MD5 verified.

  Args:
    split: ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"``
      (``test_batch``, 10,000). Ignored when ``batches`` is given.
    data_dir: directory holding the files; defaults to ``$INVJAX_DATA``.
    batches: any subset of ``data_batch_1..5`` and ``test_batch`` (ints
      1..5 mean ``data_batch_i``), concatenated in the order given.
    download: download the tarball when no local source has the batches.

  Returns:
    ``(images, labels)``: float32 ``(N, 32, 32, 3)`` in [0, 1] (the stored
    CHW rows transposed to HWC) and int32 ``(N,)``.

  Raises:
    FileNotFoundError: no local source and no download.
    ValueError: a batch decodes to the wrong content (shape, dtype, label
      range; and the balanced per-class counts of the full test and train
      splits).
  """
  names = _batch_names(split, batches)
  root = resolve_data_dir(data_dir)
  source = _cifar_source(root, names, download)
  decoded = _read_cifar_members(source, names)
  images, labels = [], []
  for name in names:
    if name not in decoded:
      raise ValueError(f"{source} does not contain {_CIFAR10_DIR}/{name}.")
    batch = decoded[name]
    where = f"{source}:{name}"
    data = np.asarray(batch.get("data"))
    lab = np.asarray(batch.get("labels"))
    if data.dtype != np.uint8 or data.shape != (_CIFAR10_BATCH_SIZE, 3072):
      raise ValueError(f"{where}: expected uint8 data of shape "
                       f"({_CIFAR10_BATCH_SIZE}, 3072), got {data.dtype} "
                       f"{data.shape}.")
    if lab.shape != (_CIFAR10_BATCH_SIZE,) or lab.dtype.kind not in "iu":
      raise ValueError(f"{where}: expected {_CIFAR10_BATCH_SIZE} integer "
                       f"labels, got {lab.dtype} {lab.shape}.")
    # Only test_batch is exactly balanced; individual train batches are not.
    _check_labels(lab, (1000,) * 10 if name == "test_batch" else None, where)
    # Rows are the 1024 red, then green, then blue values of a 32x32 image.
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(lab.astype(np.int32))
  labels = np.concatenate(labels)
  if set(names) == set(CIFAR10_TRAIN_BATCHES):
    _check_labels(labels, (5000,) * 10, f"{source} (train batches)")
  images = np.concatenate(images).astype(np.float32) / 255.0
  return images, labels


def cifar10_label_names(
    *,
    data_dir: Optional[PathLike] = None,
    download: bool = True,
) -> tuple[str, ...]:
  """Reads the class names from CIFAR-10's ``batches.meta``.

  Args:
    data_dir: as in `load_cifar10`.
    download: as in `load_cifar10`.

  Returns:
    The ten names, indexed by label (equal to `CIFAR10_CLASSES` for a genuine
    copy).
  """
  root = resolve_data_dir(data_dir)
  source = _cifar_source(root, ["batches.meta"], download)
  meta = _read_cifar_members(source, ["batches.meta"]).get("batches.meta")
  if meta is None or len(meta.get("label_names", ())) != 10:
    raise ValueError(f"{source}: batches.meta lacks ten label_names.")
  return tuple(n.decode() if isinstance(n, bytes) else str(n)
               for n in meta["label_names"])
