"""Tests for invjax.data: loaders, IDX parsing, preprocessing, batching.

Real data comes from the shared copies in ``../shared/data`` (relative to the
repository root); tests that need them are skipped when absent. Nothing here
touches the network: downloads are exercised with a patched ``urlopen``.
"""

import gzip
import hashlib
import io
import pathlib
import pickle
import tarfile
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import data
from invjax._src import data_files as data_lib

MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


@pytest.fixture(scope="module")
def shared_data():
  path = pathlib.Path(__file__).parents[2] / "shared" / "data"
  if not path.is_dir():
    pytest.skip(f"shared data not found at {path}")
  return path


@pytest.fixture(scope="module")
def mnist_test(shared_data):
  return data.load_mnist("test", data_dir=shared_data, download=False)


# ----------------------------------------------------------------------------
# IDX.
# ----------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
  header = bytes([0, 0, code, array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_uint8(tmp_path, compress):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  raw = _idx_bytes(array, 0x08)
  path = tmp_path / "tiny-idx3-ubyte"
  path.write_bytes(gzip.compress(raw) if compress else raw)
  got = data.read_idx(path)
  assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
  np.testing.assert_array_equal(got, array)


def test_parse_idx_big_endian_int32_and_float():
  ints = np.array([1, -2, 70000, 2**30], np.int32)
  got = data.parse_idx(_idx_bytes(ints, 0x0C))
  np.testing.assert_array_equal(got, ints)
  assert got.dtype == np.int32 and got.dtype.isnative
  floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
  np.testing.assert_array_equal(data.parse_idx(_idx_bytes(floats, 0x0D)),
                                floats)


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "payload"),
])
def test_parse_idx_rejects_malformed(raw, match):
  with pytest.raises(ValueError, match=match):
    data.parse_idx(raw)


# ----------------------------------------------------------------------------
# MNIST.
# ----------------------------------------------------------------------------


def test_mnist_test_split(mnist_test):
  images, labels = mnist_test
  assert images.shape == (10000, 28, 28, 1) and images.dtype == np.float32
  assert labels.shape == (10000,) and labels.dtype == np.int32
  assert images.min() == 0.0 and images.max() == 1.0
  assert tuple(np.bincount(labels)) == MNIST_TEST_COUNTS
  # Pixels are k/255 exactly (the shared copy is pixel-exact).
  np.testing.assert_allclose(images * 255, np.round(images * 255), atol=1e-4)


def test_mnist_train_split(shared_data):
  images, labels = data.load_mnist("train", data_dir=shared_data,
                                   download=False)
  assert images.shape == (60000, 28, 28, 1) and labels.shape == (60000,)
  assert tuple(np.bincount(labels)) == data.MNIST_CLASS_COUNTS["train"]


def test_mnist_from_env_var_and_flat_dir(shared_data, monkeypatch, tmp_path):
  # INVJAX_DATA pointing at the directory that *contains* mnist/.
  monkeypatch.setenv(data.DATA_ENV_VAR, str(shared_data))
  images, _ = data.load_mnist("test", download=False)
  assert images.shape[0] == 10000
  # Files directly in data_dir (no mnist/ subdirectory) work too.
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    (tmp_path / name).symlink_to(shared_data / "mnist" / name)
  images, _ = data.load_mnist("test", data_dir=tmp_path, download=False)
  assert images.shape[0] == 10000


def test_mnist_missing_file_names_file_and_dir(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    data.load_mnist("test", data_dir=tmp_path, download=False)
  message = str(info.value)
  assert "t10k-images-idx3-ubyte.gz" in message
  assert str(tmp_path / "mnist") in message


def test_mnist_wrong_content_is_rejected(tmp_path):
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
      _idx_bytes(np.zeros((5, 28, 28), np.uint8), 0x08))
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
      _idx_bytes(np.zeros((5,), np.uint8), 0x08))
  with pytest.raises(ValueError, match="t10k-images"):
    data.load_mnist("test", data_dir=tmp_path, download=False)


def test_mnist_wrong_label_counts_are_rejected(tmp_path):
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
      _idx_bytes(np.zeros((10000, 28, 28), np.uint8), 0x08))
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
      _idx_bytes(np.arange(10000, dtype=np.uint8) % 10, 0x08))
  with pytest.raises(ValueError, match="counts"):
    data.load_mnist("test", data_dir=tmp_path, download=False)


class _FakeResponse(io.BytesIO):

  def __enter__(self):
    return self

  def __exit__(self, *args):
    self.close()


def test_download_offline_says_where_to_put_the_file(tmp_path, monkeypatch):

  def offline(url, timeout=None):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(data_lib.urllib.request, "urlopen", offline)
  with pytest.raises(FileNotFoundError) as info:
    data.load_mnist("test", data_dir=tmp_path, download=True)
  message = str(info.value)
  assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in message
  assert "ossci-datasets" in message
  assert not list((tmp_path / "mnist").iterdir())


def test_download_md5_mismatch_deletes_and_raises(tmp_path, monkeypatch):
  monkeypatch.setattr(data_lib.urllib.request, "urlopen",
                      lambda url, timeout=None: _FakeResponse(b"not mnist"))
  with pytest.raises(ValueError, match="MD5"):
    data.load_mnist("test", data_dir=tmp_path, download=True)
  assert not list((tmp_path / "mnist").iterdir())


def test_download_verified_file_is_kept(tmp_path, monkeypatch):
  payload = b"some published bytes"
  seen = []

  def serve(url, timeout=None):
    seen.append(url)
    if len(seen) == 1:  # The first mirror is down; the second answers.
      raise urllib.error.URLError("mirror down")
    return _FakeResponse(payload)

  monkeypatch.setattr(data_lib.urllib.request, "urlopen", serve)
  dest = tmp_path / "sub" / "file.gz"
  data_lib._download(["https://a/file.gz", "https://b/file.gz"], dest,
                     hashlib.md5(payload).hexdigest())
  assert dest.read_bytes() == payload
  assert seen == ["https://a/file.gz", "https://b/file.gz"]


# ----------------------------------------------------------------------------
# CIFAR-10.
# ----------------------------------------------------------------------------


def test_cifar10_test_split(shared_data):
  images, labels = data.load_cifar10("test", data_dir=shared_data,
                                     download=False)
  assert images.shape == (10000, 32, 32, 3) and images.dtype == np.float32
  assert labels.shape == (10000,) and labels.dtype == np.int32
  assert 0.0 <= images.min() and images.max() <= 1.0
  assert tuple(np.bincount(labels)) == (1000,) * 10
  # The published test-set channel means; a CHW/HWC mix-up would scramble
  # them (and the JPEG re-encoding moves them by well under 0.005).
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)),
                             [0.4942, 0.4851, 0.4504], atol=5e-3)
  assert data.cifar10_label_names(
      data_dir=shared_data, download=False) == data.CIFAR10_CLASSES


def _fake_batch(labels, *, str_keys=True):
  # Channel c of every pixel holds 50 * c + (row index mod 50): the loader
  # must put channel last and keep rows in order.
  n = len(labels)
  chans = (np.arange(3)[None, :, None] * 50 +
           (np.arange(n) % 50)[:, None, None])
  rows = np.broadcast_to(chans, (n, 3, 1024)).reshape(n, 3072)
  rows = rows.astype(np.uint8).copy()
  batch = {"batch_label": "fake", "labels": list(map(int, labels)),
           "data": rows, "filenames": ["x"] * n}
  if not str_keys:
    batch = {k.encode(): v for k, v in batch.items()}
  return pickle.dumps(batch, protocol=2)


def _balanced_labels(seed):
  return np.random.default_rng(seed).permutation(np.arange(10000) % 10)


def test_cifar10_extracted_dir_and_batch_subset(tmp_path):
  root = tmp_path / "cifar10" / "cifar-10-batches-py"
  root.mkdir(parents=True)
  labels1, labels2 = _balanced_labels(1), _balanced_labels(2)
  (root / "data_batch_1").write_bytes(_fake_batch(labels1))
  # bytes keys, as in the Python 2 pickles of the original release.
  (root / "data_batch_2").write_bytes(_fake_batch(labels2, str_keys=False))
  images, labels = data.load_cifar10(data_dir=tmp_path, batches=[2, 1],
                                     download=False)
  assert images.shape == (20000, 32, 32, 3)
  np.testing.assert_array_equal(labels, np.concatenate([labels2, labels1]))
  for c in range(3):
    np.testing.assert_allclose(images[7, :, :, c], (50 * c + 7) / 255.0)


def test_cifar10_tarball_read_in_memory(tmp_path):
  labels = _balanced_labels(3)
  payload = _fake_batch(labels)
  tar_path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(tar_path, "w:gz") as tar:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_3")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  images, got = data.load_cifar10(data_dir=tmp_path, batches=["data_batch_3"],
                                  download=False)
  np.testing.assert_array_equal(got, labels)
  assert images.shape == (10000, 32, 32, 3)
  assert sorted(p.name for p in tmp_path.iterdir()) == [tar_path.name]


def test_cifar10_unbalanced_test_batch_is_rejected(tmp_path):
  root = tmp_path / "cifar-10-batches-py"
  root.mkdir()
  (root / "test_batch").write_bytes(_fake_batch(np.zeros(10000, int)))
  with pytest.raises(ValueError, match="counts"):
    data.load_cifar10("test", data_dir=tmp_path, download=False)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
  root = tmp_path / "cifar-10-batches-py"
  root.mkdir()

  class Evil:

    def __reduce__(self):
      return (print, ("pwned",))

  (root / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
  with pytest.raises(pickle.UnpicklingError, match="print"):
    data.load_cifar10("test", data_dir=tmp_path, download=False)


def test_cifar10_missing_names_file_and_dir(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    data.load_cifar10("train", data_dir=tmp_path, download=False)
  message = str(info.value)
  assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message


def test_cifar10_unknown_batch():
  with pytest.raises(ValueError, match="data_batch_7"):
    data.load_cifar10(batches=["data_batch_7"], download=False)


# ----------------------------------------------------------------------------
# Digits.
# ----------------------------------------------------------------------------


def test_digits():
  images, labels = data.load_digits()
  assert images.shape == (1797, 28, 28, 1) and images.dtype == np.float32
  assert labels.shape == (1797,) and labels.dtype == np.int32
  assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
  assert set(np.unique(labels)) == set(range(10))
  small, _ = data.load_digits(size=8)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(small[..., 0],
                                datasets.load_digits().images / 16.0)
  # Upsampling keeps the picture: it correlates strongly with a
  # nearest-neighbour upsampling of the originals.
  nearest = small[:, (np.arange(28) * 8) // 28][:, :, (np.arange(28) * 8) // 28]
  corr = np.corrcoef(images.ravel(), nearest.ravel())[0, 1]
  assert corr > 0.9


# ----------------------------------------------------------------------------
# Preprocessing and batching.
# ----------------------------------------------------------------------------


def test_standardize_per_channel():
  rng = np.random.default_rng(0)
  images = (rng.normal(size=(50, 6, 6, 3)) * [1.0, 2.0, 0.5] +
            [0.0, 3.0, -1.0]).astype(np.float32)
  out, (mean, std) = data.standardize(images)
  assert out.dtype == np.float32 and mean.shape == std.shape == (3,)
  np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
  # The training statistics applied to other data.
  other, stats = data.standardize(images[:10] + 1.0, mean=mean, std=std)
  np.testing.assert_allclose(other, out[:10] + 1.0 / std, atol=1e-5)
  assert stats[0] is not None
  on_device, _ = data.standardize(jnp.asarray(images), mean=mean, std=std)
  assert isinstance(on_device, jax.Array)
  np.testing.assert_allclose(on_device, out, atol=1e-5)


def test_standardize_constant_channel_is_not_divided_by_zero():
  images = np.zeros((4, 2, 2, 2), np.float32)
  images[..., 1] = np.arange(4)[:, None, None]
  out, (_, std) = data.standardize(images)
  assert np.all(np.isfinite(out)) and std[0] == 1.0


@pytest.mark.parametrize("counts, n, expected", [
    ((500, 300, 200), 100, (50, 30, 20)),
    ((3, 3, 3), 4, (2, 1, 1)),        # equal remainders: smaller label wins
    ((5, 3, 2), 5, (3, 1, 1)),        # 2.5, 1.5, 1.0
    ((1, 1, 98), 3, (0, 0, 3)),       # 0.03, 0.03, 2.94
    ((7, 2, 1), 10, (7, 2, 1)),
    ((7, 2, 1), 0, (0, 0, 0)),
])
def test_stratified_allocation(counts, n, expected):
  labels = np.repeat(np.arange(len(counts)) * 3, counts)  # non-0..K labels
  np.random.default_rng(0).shuffle(labels)
  idx = data.stratified_indices(labels, n, seed=0)
  assert len(idx) == n and len(np.unique(idx)) == n
  assert np.all(np.diff(idx) > 0)
  got = tuple(int(np.sum(labels[idx] == 3 * c)) for c in range(len(counts)))
  assert got == expected


def test_stratified_subset_of_mnist(mnist_test):
  images, labels = mnist_test
  sub_x, sub_y = data.stratified_subset(images, labels, 1000, seed=0)
  assert sub_x.shape == (1000, 28, 28, 1)
  # 98, 113.5, 103.2, 101, 98.2, 89.2, 95.8, 102.8, 97.4, 100.9 rounded by
  # largest remainder: the four leftover slots go to 9, 6, 7, 1.
  assert tuple(np.bincount(sub_y)) == (98, 114, 103, 101, 98, 89, 96, 103,
                                       97, 101)
  again_x, _ = data.stratified_subset(images, labels, 1000, seed=0)
  np.testing.assert_array_equal(sub_x, again_x)
  other = data.stratified_indices(labels, 1000, seed=1)
  assert not np.array_equal(other, data.stratified_indices(labels, 1000,
                                                           seed=0))


def test_stratified_rejects_bad_n():
  with pytest.raises(ValueError):
    data.stratified_indices(np.zeros(5, int), 6, seed=0)


def test_batches():
  images = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
  labels = np.arange(10, dtype=np.int32)
  out = list(data.batches(images, labels, 4))
  assert [b[0].shape[0] for b in out] == [4, 4, 2]
  assert all(isinstance(x, jax.Array) and isinstance(y, jax.Array)
             for x, y in out)
  np.testing.assert_array_equal(np.concatenate([y for _, y in out]), labels)

  dropped = list(data.batches(images, labels, 4, drop_remainder=True))
  assert [b[1].shape[0] for b in dropped] == [4, 4]

  shuffled = list(data.batches(images, labels, 3, shuffle=True, seed=5))
  order = np.concatenate([y for _, y in shuffled])
  assert sorted(order) == list(range(10)) and list(order) != list(range(10))
  for x, y in shuffled:  # images stay paired with their labels
    np.testing.assert_array_equal(x[:, 0], 2 * y)
  again = np.concatenate(
      [y for _, y in data.batches(images, labels, 3, shuffle=True, seed=5)])
  np.testing.assert_array_equal(order, again)

  unlabelled = list(data.batches(images, None, 5))
  assert len(unlabelled) == 2 and unlabelled[0][1] is None


def test_batches_validates_eagerly():
  with pytest.raises(ValueError):
    data.batches(np.zeros((3, 1)), np.zeros(2), 2)
  with pytest.raises(ValueError):
    data.batches(np.zeros((3, 1)), np.zeros(3), 0)
