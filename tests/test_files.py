"""Crash-safe files: atomic writes, torn JSON lines, result files."""

import io
import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest

import invjax
from invjax._src import files
from invjax._src import result as result_lib


def _result(**settings):
  rng = np.random.default_rng(0)
  return result_lib.MeasureResult.from_outputs(
      "normalized_variance", {"num_samples": 4, **settings},
      {"conv": {"values": rng.random((3, 3, 2))},
       "fc": {"values": rng.random(5)}})


def _assert_same(a, b):
  assert a.layers == b.layers and a.per_layer == b.per_layer
  for l in a.layers:
    np.testing.assert_array_equal(a.per_activation[l], b.per_activation[l])


# ---------------------------------------------------------------------------
# MeasureResult.save and load_result.
# ---------------------------------------------------------------------------


def test_save_writes_the_path_as_given(tmp_path):
  res = _result(exact=np.bool_(True))             # A NumPy bool setting.
  res.save(tmp_path / "nv.result")                 # No ".npz" appended.
  assert os.listdir(tmp_path) == ["nv.result"]
  back = invjax.load_result(tmp_path / "nv.result")
  _assert_same(res, back)
  assert back.settings["exact"] is True


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "nv.npz"
  first = _result()
  first.save(path)
  savez = np.savez_compressed

  def killed(f, **arrays):
    buf = io.BytesIO()
    savez(buf, **arrays)
    f.write(buf.getvalue()[:100])                  # Half written, then...
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "savez_compressed", killed)
  with pytest.raises(KeyboardInterrupt):
    _result().save(path)
  assert os.listdir(tmp_path) == ["nv.npz"]        # No temporary left.
  _assert_same(first, invjax.load_result(path))


def _npz(**arrays):
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _npy(a):
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


def _corrupt(data):
  # Overwrites the middle of the first member's (compressed) data: its local
  # header is 30 bytes, then its name and extra field; the central
  # directory has its size.
  first = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
  data = bytearray(data)
  start = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(
      data[28:30], "little")
  middle = start + first.compress_size // 2
  data[middle:middle + 16] = b"\xff" * 16
  return bytes(data)


def test_results_are_compressed_and_earlier_files_still_load(tmp_path):
  res = _result(note="×2 → ok")                   # Non-ASCII settings too.
  res.save(tmp_path / "new.npz")
  with zipfile.ZipFile(tmp_path / "new.npz") as z:
    assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
  with np.load(tmp_path / "new.npz") as data:
    assert data["__metadata__"].dtype.kind == "S"  # Bytes, not UTF-32.
  back = invjax.load_result(tmp_path / "new.npz")
  _assert_same(res, back)
  assert back.settings["note"] == "×2 → ok"
  # The format before: uncompressed, the metadata a NumPy unicode string.
  with np.load(tmp_path / "new.npz") as data:
    arrays = {k: data[k] for k in data.files}
  arrays["__metadata__"] = np.array(arrays["__metadata__"].item().decode())
  np.savez(tmp_path / "old.npz", **arrays)
  _assert_same(res, invjax.load_result(tmp_path / "old.npz"))


def _valid(tmp_path):
  _result().save(tmp_path / "valid.npz")
  return (tmp_path / "valid.npz").read_bytes()


_BAD_FILES = {
    "empty": (lambda tp: b"", "is empty"),
    "truncated": (lambda tp: _valid(tp)[:len(_valid(tp)) // 2],
                  "truncated or damaged"),
    "corrupted_inside": (lambda tp: _corrupt(_valid(tp)),
                         "truncated or damaged"),
    "text": (lambda tp: b"layer,value\nconv,0.5\n",
             "not a .npz \\(zip\\) archive"),
    "npy": (lambda tp: _npy(np.arange(3.0)), "a NumPy .npy array"),
    "pickle": (lambda tp: pickle.dumps({"per_layer": {}}), "a Python pickle"),
    "npz_without_metadata": (lambda tp: _npz(x=np.arange(3)),
                             "no metadata"),
    "npz_with_objects": (lambda tp: _npz(x=np.array([{"a": 1}], object)),
                         "pickled Python objects"),
    "metadata_not_json": (lambda tp: _npz(__metadata__=np.array("{oops")),
                          "metadata entry is not JSON"),
    "other_format": (lambda tp: _npz(__metadata__=np.array('{"a": 1}')),
                     "unknown result format None"),
    "arrays_missing": (lambda tp: _npz(__metadata__=np.array(json.dumps(
        {"format": result_lib._FORMAT, "measure": "nv", "settings": {},
         "layers": ["conv"], "per_layer": {"conv": 1.0}, "extras": {},
         "zero_division": {}, "nonfinite_skipped": {}, "notes": {}}))),
                       "metadata and arrays do not match"),
}


@pytest.mark.parametrize("kind", list(_BAD_FILES))
def test_load_result_names_the_file_and_the_problem(tmp_path, kind):
  make, match = _BAD_FILES[kind]
  path = tmp_path / f"{kind}.npz"
  path.write_bytes(make(tmp_path))
  with pytest.raises(ValueError, match=match) as e:
    invjax.load_result(path)
  assert str(path) in str(e.value)
  assert len(str(e.value)) < 500


def test_load_result_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError):
    invjax.load_result(tmp_path / "nope.npz")


# ---------------------------------------------------------------------------
# The helpers.
# ---------------------------------------------------------------------------


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
  path = tmp_path / "a.json"
  files.atomic_write_text(path, "old")
  with pytest.raises(RuntimeError):
    with files.atomic_open(path, "w") as f:
      f.write("new, half")
      raise RuntimeError("killed")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
  files.atomic_write_bytes(path, b"new")
  assert path.read_bytes() == b"new"
  # The permissions of a plain open (the umask applies), not mkstemp's 0600.
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
  # A symbolic link stays one; its target is replaced.
  os.symlink(path, tmp_path / "link")
  files.atomic_write_text(tmp_path / "link", "via link")
  assert os.path.islink(tmp_path / "link") and path.read_text() == "via link"


def test_read_jsonl_drops_a_torn_last_line(tmp_path):
  path = tmp_path / "m.jsonl"
  assert files.read_jsonl(path) == ([], False)
  path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
  assert files.read_jsonl(path) == ([{"step": 1}, {"step": 2}], True)
  path.write_text('{"step": 1}\n{"step": 2}')      # Complete, no newline.
  assert files.read_jsonl(path) == ([{"step": 1}, {"step": 2}], False)
  path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(ValueError, match="line 2") as e:
    files.read_jsonl(path)
  assert str(path) in str(e.value)
  path.write_text('{"step": 1}\n[1, 2]\n')
  with pytest.raises(ValueError, match="line 2: expected a JSON object"):
    files.read_jsonl(path)
