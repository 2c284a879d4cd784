"""The tmeasures side of `vs_tmeasures.py`; runs in `.venv-peer/bin/python`.

    .venv-peer/bin/python benchmarks/_tmeasures_peer.py IN.npz OUT.npz \
        [--device cpu|cuda] [--batch-size 128]

Not run directly: `vs_tmeasures.py` writes IN.npz (SimpleConv weights in Flax
layout, the images and the jobs to run) and reads OUT.npz back. This file
imports only torch, numpy and tmeasures, never invjax or jax.

IN.npz holds
  ``param/<layer>/<kernel|bias>``: Flax arrays (conv kernels (kh, kw, cin,
    cout), dense kernels (din, dout));
  ``images``: (N, 28, 28, 1) float32, NHWC;
  ``jobs``: a JSON string, a list of
    ``{"name", "kind": "c4"|"rotation", "n", "measures": [...],
       "turns": [...] (rotation only), "repeats"}``.
OUT.npz holds, per job, ``<name>/<measure>/<layer>`` per-activation arrays
(transposed to NHWC order, so (h, w, c) for conv layers) and
``<name>/seconds`` (one wall time per repeat), plus ``layers``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import tmeasures as tm
from tmeasures.pytorch.transformations.affine import RotationGenerator

# invjax's SimpleConv layer names, in execution order (what invjax.capture.linen
# reports, less the duplicate "output").
LAYERS = ("conv1", "conv1_act", "conv2", "conv2_act", "pool1",
          "conv3", "conv3_act", "conv4", "conv4_act", "pool2",
          "conv5", "conv5_act", "fc1", "fc1_act", "logits")
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


class SimpleConvTorch(tm.pytorch.ActivationsModule):
  """invjax.models.SimpleConv (ELU, max pooling, no batch norm) in PyTorch.

  Built from Flax weights: conv kernels (kh, kw, cin, cout) become
  (cout, cin, kh, kw); padding k//2 on each side is what the Flax model uses.
  The conv5 output is transposed NCHW -> NHWC before flattening, so the flat
  vector (and so fc1's kernel rows) is in Flax's (h, w, c) order.
  """

  def __init__(self, params: dict[str, dict[str, np.ndarray]]):
    super().__init__()
    for name in CONVS:
      k = torch.from_numpy(np.ascontiguousarray(
          params[name]["kernel"].transpose(3, 2, 0, 1)))
      conv = torch.nn.Conv2d(k.shape[1], k.shape[0], k.shape[2:],
                             padding=k.shape[2] // 2)
      conv.weight.data.copy_(k)
      conv.bias.data.copy_(torch.from_numpy(params[name]["bias"]))
      self.add_module(name, conv)
    for name in ("fc1", "logits"):
      k = torch.from_numpy(np.ascontiguousarray(params[name]["kernel"].T))
      dense = torch.nn.Linear(k.shape[1], k.shape[0])
      dense.weight.data.copy_(k)
      dense.bias.data.copy_(torch.from_numpy(params[name]["bias"]))
      self.add_module(name, dense)

  def activation_names(self) -> list[str]:
    return list(LAYERS)

  def forward_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
    out = []

    def keep(y):
      out.append(y)
      return y

    x = keep(F.elu(keep(self.conv1(x))))
    x = keep(F.elu(keep(self.conv2(x))))
    x = keep(F.max_pool2d(x, 2))
    x = keep(F.elu(keep(self.conv3(x))))
    x = keep(F.elu(keep(self.conv4(x))))
    x = keep(F.max_pool2d(x, 2))
    x = keep(F.elu(keep(self.conv5(x))))
    x = torch.flatten(x.permute(0, 2, 3, 1), 1)   # NHWC flatten, as Flax
    x = keep(F.elu(keep(self.fc1(x))))
    keep(self.logits(x))
    return out

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.forward_activations(x)[-1]


class Images(torch.utils.data.Dataset):
  """Map-style dataset of (C, H, W) tensors, as tmeasures expects (no labels)."""

  def __init__(self, images_nhwc: np.ndarray):
    self.x = torch.from_numpy(
        np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))

  def __len__(self) -> int:
    return self.x.shape[0]

  def __getitem__(self, i: int) -> torch.Tensor:
    return self.x[i]


class Rot90:
  """k counter-clockwise quarter turns of a (C, H, W) tensor (exact, C4)."""

  def __init__(self, k: int):
    self.k = k

  def __call__(self, x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, self.k, dims=(1, 2))


MEASURES = {
    "tv": tm.pytorch.TransformationVarianceInvariance,
    "sv": tm.pytorch.SampleVarianceInvariance,
    "nv": tm.pytorch.NormalizedVarianceInvariance,
}


def _to_nhwc(a: np.ndarray) -> np.ndarray:
  return a.transpose(1, 2, 0) if a.ndim == 3 else a


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("inp")
  p.add_argument("out")
  p.add_argument("--device", default="cpu")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--threads", type=int, default=0,
                 help="torch intra-op threads (0: torch's default)")
  p.add_argument("--no-tf32", action="store_true",
                 help="full float32 convolutions and matmuls on CUDA")
  args = p.parse_args()
  if args.no_tf32:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
  # tmeasures' DataLoaders ask for pinned memory, which a CPU-only torch lacks.
  warnings.filterwarnings("ignore", message=".*pin_memory.*")
  if args.threads:
    torch.set_num_threads(args.threads)

  data = np.load(args.inp)
  params: dict[str, dict[str, np.ndarray]] = {}
  for key in data.files:
    if key.startswith("param/"):
      _, layer, leaf = key.split("/")
      params.setdefault(layer, {})[leaf] = data[key]
  images = data["images"]
  jobs = json.loads(str(data["jobs"]))

  model = SimpleConvTorch(params).to(args.device).eval()
  options = tm.pytorch.PyTorchMeasureOptions(
      batch_size=args.batch_size, num_workers=0, verbose=False,
      model_device=args.device, measure_device=args.device, data_device="cpu")
  out: dict[str, np.ndarray] = {"layers": np.array(LAYERS)}
  for job in jobs:
    dataset = Images(images[:job["n"]])
    if job["kind"] == "c4":
      transformations = tm.pytorch.PyTorchTransformationSet(
          [Rot90(k) for k in range(4)])
    elif job["kind"] == "rotation":
      # tmeasures multiplies r by 180 and hands it to cos/sin as radians
      # (tmeasures.md §3): the caller passes r = radians / 180 so the angles
      # are the ones invjax uses.
      transformations = RotationGenerator(r=list(job["turns"]))
    else:
      raise ValueError(f"unknown job kind {job['kind']!r}")
    seconds = []
    for _ in range(job.get("repeats", 1)):
      for m in job["measures"]:
        t0 = time.perf_counter()
        result = MEASURES[m]().eval(dataset, transformations, model, options)
        if args.device != "cpu":
          torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        result = result.numpy()
        for name, values in zip(result.layer_names, result.layers):
          out[f"{job['name']}/{m}/{name}"] = _to_nhwc(
              np.asarray(values, np.float64))
    out[f"{job['name']}/seconds"] = np.array(seconds)
    print(f"peer: {job['name']}: {' '.join(f'{s:.2f}s' for s in seconds)}",
          file=sys.stderr, flush=True)
  np.savez(args.out, **out)


if __name__ == "__main__":
  main()
