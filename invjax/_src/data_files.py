"""Dataset files: where they are looked up, downloaded and checked.

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

import hashlib
import os
import pathlib
import urllib.error
import urllib.request
from typing import Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]

DATA_ENV_VAR = "INVJAX_DATA"

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


def _find(root: pathlib.Path, subdir: str,
          names: Sequence[str]) -> Optional[pathlib.Path]:
  for directory in (root / subdir, root):
    for name in names:
      if (directory / name).is_file():
        return directory / name
  return None


# ----------------------------------------------------------------------------
# Checking decoded content.
# ----------------------------------------------------------------------------


def _check_labels(labels: np.ndarray, counts: Optional[Sequence[int]],
                  source: object, num_classes: int = 10) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{source}: labels outside 0..{num_classes - 1}.")
  if counts is not None:
    got = np.bincount(labels, minlength=num_classes)
    if tuple(got) != tuple(counts):
      raise ValueError(f"{source}: per-class label counts {tuple(got)} differ "
                       f"from the published {tuple(counts)}.")
