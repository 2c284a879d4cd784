"""MNIST, read from its published IDX files without torchvision or TFDS.

The four IDX files (``train-images-idx3-ubyte.gz`` ...), LeCun et al. (1998),
http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import pathlib
from typing import Optional

import numpy as np

from invjax._src.data_files import _check_labels
from invjax._src.data_files import _download
from invjax._src.data_files import _find
from invjax._src.data_files import PathLike
from invjax._src.data_files import resolve_data_dir

# ----------------------------------------------------------------------------
# Published metadata.
# ----------------------------------------------------------------------------

# Mirrors of the original yann.lecun.com files, tried in order. The original
# host now often refuses plain downloads, so the well-known mirrors used by
# torchvision and TensorFlow come first.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# (images file, labels file) per split, with the published MD5 of each .gz.
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Published per-class label counts, digits 0..9. Checking them catches a
# truncated, shuffled-with-the-wrong-labels or otherwise wrong local copy.
MNIST_CLASS_COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}

# ----------------------------------------------------------------------------
# MNIST (IDX format).
# ----------------------------------------------------------------------------

# IDX type codes (third magic byte) -> NumPy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes) -> np.ndarray:
  """Decodes one IDX file (the MNIST container format) from its bytes.

  The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B
  int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions
  ``d``, then ``d`` big-endian uint32 sizes; the data follow in C order,
  big-endian (LeCun et al., http://yann.lecun.com/exdb/mnist/).

  Args:
    data: the uncompressed file content.

  Returns:
    An array of the decoded shape, in native byte order.

  Raises:
    ValueError: malformed header or wrong payload size.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError("Not an IDX file: the magic number must start with two "
                     "zero bytes.")
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"Unknown IDX type code 0x{code:02x}.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError("Truncated IDX header.")
  shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise ValueError(f"IDX payload has {len(data) - header} bytes; the header "
                     f"{shape} of {dtype} promises {expected}.")
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


def read_idx(path: PathLike) -> np.ndarray:
  """Reads an IDX file, gzip-compressed or not (detected from its bytes).

  Args:
    path: file path.

  Returns:
    The decoded array; see `parse_idx`.
  """
  raw = pathlib.Path(path).read_bytes()
  # Detect gzip by its magic rather than the file name, so renamed or
  # already-decompressed copies both work.
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  return parse_idx(raw)



def _mnist_file(root: pathlib.Path, name: str, download: bool) -> pathlib.Path:
  # Accept the decompressed file too: some copies are stored un-gzipped.
  found = _find(root, "mnist", (name, name[:-len(".gz")]))
  if found is not None:
    return found
  dest = root / "mnist" / name
  if not download:
    raise FileNotFoundError(
        f"MNIST file {name} not found in {root / 'mnist'} or {root}. Put it "
        f"there (from {MNIST_MIRRORS[0]}{name}) or pass download=True.")
  _download([m + name for m in MNIST_MIRRORS], dest, _MNIST_MD5[name])
  return dest


def load_mnist(
    split: str = "test",
    *,
    data_dir: Optional[PathLike] = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads MNIST (LeCun et al., 1998) from the published IDX files.

  Files are looked up as ``data_dir/mnist/<file>`` then ``data_dir/<file>``
  (gzipped or not); see `invjax._src.data_files` for how ``data_dir``
  resolves and when files are downloaded.

  Args:
    split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
    data_dir: directory holding the files; defaults to ``$INVJAX_DATA``.
    download: download missing files (MD5-verified) instead of raising.

  Returns:
    ``(images, labels)``: float32 ``(N, 28, 28, 1)`` in [0, 1] and int32
    ``(N,)``, in the published order.

  Raises:
    FileNotFoundError: a file is missing and cannot be downloaded.
    ValueError: a file decodes to the wrong content (shape, label range or
      the published per-class counts).
  """
  if split not in _MNIST_FILES:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  root = resolve_data_dir(data_dir)
  images_name, labels_name = _MNIST_FILES[split]
  images_path = _mnist_file(root, images_name, download)
  labels_path = _mnist_file(root, labels_name, download)
  images = read_idx(images_path)
  labels = read_idx(labels_path)

  counts = MNIST_CLASS_COUNTS[split]
  n = sum(counts)
  if images.dtype != np.uint8 or images.shape != (n, 28, 28):
    raise ValueError(f"{images_path}: expected uint8 images of shape "
                     f"{(n, 28, 28)}, got {images.dtype} {images.shape}.")
  if labels.dtype != np.uint8 or labels.shape != (n,):
    raise ValueError(f"{labels_path}: expected {n} uint8 labels, got "
                     f"{labels.dtype} {labels.shape}.")
  _check_labels(labels, counts, labels_path)
  return (images[..., None].astype(np.float32) / 255.0,
          labels.astype(np.int32))
