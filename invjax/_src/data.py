"""Dataset loaders and the small array utilities the paper experiments need.

Quiroga et al. measure invariance on MNIST and CIFAR-10, standardised per
channel, using 1,000 stratified test samples (10% of the test set); see
`tmeasures.md` section 4. This module reads both datasets in the formats they
are published in, without torchvision or tensorflow-datasets:

* MNIST: the four IDX files (``train-images-idx3-ubyte.gz`` ...), LeCun et al.
  (1998), http://yann.lecun.com/exdb/mnist/.
* CIFAR-10: the Python pickles ``cifar-10-batches-py/{data_batch_1..5,
  test_batch,batches.meta}``, read straight out of the tarball in memory or
  from an extracted directory; Krizhevsky (2009),
  https://www.cs.toronto.edu/~kriz/cifar.html.
* scikit-learn's bundled 8x8 digits, upsampled, as an offline default that
  needs neither a download nor a data directory.

Every loader returns host (NumPy) arrays ``(images, labels)``: float32 images
``(N, H, W, C)`` in [0, 1] and int32 labels ``(N,)``. `batches` moves them to
the device one batch at a time.

Where files come from. ``data_dir`` is the argument, else the ``INVJAX_DATA``
environment variable, else ``$XDG_CACHE_HOME/invjax`` (``~/.cache/invjax``).
Files are looked up in ``data_dir/<dataset>/`` and then ``data_dir/``. A file
that is missing is downloaded (when ``download=True``) into
``data_dir/<dataset>/`` and its published MD5 is verified; local files are
trusted as they are, because re-encoded copies (for example the shared test
data, whose gzip bytes differ from the published ones) are legitimate, but
their *decoded* content is validated: shapes, dtypes, label range and the
published per-class counts.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import pickle
import tarfile
import urllib.error
import urllib.request
from typing import Iterator, Optional, Sequence, Union

import jax
import numpy as np

PathLike = Union[str, os.PathLike]

DATA_ENV_VAR = "INVJAX_DATA"

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
# Locating and downloading files.
# ----------------------------------------------------------------------------


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> pathlib.Path:
  """Resolves the data directory.

  Args:
    data_dir: explicit directory; wins over everything else.

  Returns:
    ``data_dir`` if given, else ``$INVJAX_DATA`` if set, else
    ``$XDG_CACHE_HOME/invjax`` (default ``~/.cache/invjax``).
  """
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  env = os.environ.get(DATA_ENV_VAR)
  if env:
    return pathlib.Path(env).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
  return pathlib.Path(cache).expanduser() / "invjax"


def _md5(path: pathlib.Path) -> str:
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _download(urls: Sequence[str], dest: pathlib.Path, md5: str) -> None:
  """Downloads the first reachable URL to ``dest`` and verifies its MD5.

  The file is written next to ``dest`` under a temporary name and renamed only
  once complete and verified, so an interrupted download never leaves a
  half-written file that a later call would trust.

  Raises:
    ValueError: the downloaded bytes do not match ``md5`` (the file is
      deleted).
    FileNotFoundError: no URL could be reached; the message says where to
      put the file by hand.
  """
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(dest.name + ".part")
  errors = []
  for url in urls:
    try:
      with urllib.request.urlopen(url, timeout=60) as response, \
          open(tmp, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
      errors.append(f"{url}: {e}")
      tmp.unlink(missing_ok=True)
      continue
    got = _md5(tmp)
    if got != md5:
      tmp.unlink(missing_ok=True)
      raise ValueError(
          f"Downloaded {url} has MD5 {got}, expected the published {md5}; "
          "the file was deleted. Retry, or download it by hand and place it "
          f"at {dest}.")
    tmp.replace(dest)
    return
  raise FileNotFoundError(
      f"Could not download {dest.name} (network unavailable?). Download it "
      f"by hand from {urls[0]} and place it at {dest}, or set the "
      f"{DATA_ENV_VAR} environment variable / data_dir argument to a "
      "directory that holds it. Errors: " + "; ".join(errors))


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


def _find(root: pathlib.Path, subdir: str,
          names: Sequence[str]) -> Optional[pathlib.Path]:
  for directory in (root / subdir, root):
    for name in names:
      if (directory / name).is_file():
        return directory / name
  return None


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
  (gzipped or not); see the module docstring for how ``data_dir`` resolves
  and when files are downloaded.

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


def _check_labels(labels: np.ndarray, counts: Optional[Sequence[int]],
                  source: object, num_classes: int = 10) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{source}: labels outside 0..{num_classes - 1}.")
  if counts is not None:
    got = np.bincount(labels, minlength=num_classes)
    if tuple(got) != tuple(counts):
      raise ValueError(f"{source}: per-class label counts {tuple(got)} differ "
                       f"from the published {tuple(counts)}.")


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
