"""LEE throughput (images/s) of a ResNet-18 on 32×32×3 images.

    python benchmarks/lee_throughput.py [--batch-size 16] [--num-images 64]
        [--generators translation_x rotation] [--width 64] [--layerwise]

End to end: `lie_derivative` (one `jax.jvp` of the network per batch,
vmapped over the generators, softmax outputs, mean-square LEE) compiled once
and run over ``num-images`` random images in batches; also the plain
forward pass on the same batches, for the ratio. The model is
`invjax.models.ResNet18` when importable, else a small inline ResNet-18.

``--layerwise`` also times `layerwise_lie_derivative` (exact per-layer
contributions) on an inline ResNet-18 written as a sequence of 11 layers
(stem, 8 basic blocks, pool, dense). Its cost grows like n²/2 layer JVPs.

Reports median wall times over ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import lie


class _Stem(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.width, (3, 3), use_bias=False)(x))


class _BasicBlock(nn.Module):
  """3×3 conv → ReLU → 3×3 conv, plus a 1×1 projection when shapes change."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), strides=self.strides,
                use_bias=False)(x)
    y = nn.Conv(self.features, (3, 3), use_bias=False)(nn.relu(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.strides,
                  use_bias=False)(x)
    return nn.relu(x + y)


def inline_resnet18(num_classes: int = 10, width: int = 64) -> nn.Sequential:
  """CIFAR-style ResNet-18 (3×3 stem, [2, 2, 2, 2] blocks) as 11 layers."""
  blocks = []
  for stage in range(4):
    for b in range(2):
      blocks.append(_BasicBlock(width * 2**stage,
                                strides=2 if (stage > 0 and b == 0) else 1))
  return nn.Sequential([_Stem(width), *blocks,
                        lambda x: jnp.mean(x, axis=(1, 2)),
                        nn.Dense(num_classes)])


def _model(num_classes, width):
  try:
    from invjax.models import ResNet18  # pylint: disable=g-import-not-at-top
    return ResNet18(num_classes=num_classes, width=width), "invjax.models"
  except ImportError:
    return inline_resnet18(num_classes, width), "inline"


def _time(fn, repeats):
  jax.block_until_ready(fn())                         # compile + warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--num-images", type=int, default=64)
  p.add_argument("--generators", nargs="+",
                 default=["translation_x", "rotation"])
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--layerwise", action="store_true")
  args = p.parse_args()

  b = args.batch_size
  nb = -(-args.num_images // b)
  images = np.random.default_rng(0).uniform(
      size=(nb, b, 32, 32, 3)).astype(np.float32)
  batches = [jnp.asarray(x) for x in images]
  gens = tuple(args.generators)
  n = nb * b

  model, source = _model(args.num_classes, args.width)
  variables = jax.jit(model.init)(jax.random.key(0), batches[0])

  forward = jax.jit(lambda v, x: model.apply(v, x))
  lee = jax.jit(lambda v, x: lie.lie_derivative(
      lambda z: model.apply(v, z), x, gens).per_image)

  t_fwd = _time(lambda: [forward(variables, x) for x in batches],
                args.repeats)
  t_lee = _time(lambda: [lee(variables, x) for x in batches], args.repeats)

  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({jax.default_backend()}), "
        f"model: ResNet-18 ({source}, width {args.width}), images {n} × "
        f"32×32×3, batch {b}, generators {list(gens)}")
  print(f"forward      {n / t_fwd:10.1f} images/s   ({t_fwd * 1e3:.0f} ms)")
  print(f"LEE (e2e)    {n / t_lee:10.1f} images/s   ({t_lee * 1e3:.0f} ms; "
        f"{n * len(gens) / t_lee:.1f} image·generators/s; "
        f"{t_lee / t_fwd:.1f}× forward)")

  if args.layerwise:
    seq = inline_resnet18(args.num_classes, args.width)
    seq_vars = jax.jit(seq.init)(jax.random.key(0), batches[0])
    seq_e2e = jax.jit(lambda v, x: lie.lie_derivative(
        lambda z: seq.apply(v, z), x, gens))
    layerwise = jax.jit(lambda v, x: lie.layerwise_lie_derivative(
        lie.linen_sequential_layers(seq, v), x, gens))
    t_seq = _time(lambda: [seq_e2e(seq_vars, x).per_image for x in batches],
                  args.repeats)
    t_lw = _time(lambda: [layerwise(seq_vars, x).per_image for x in batches],
                 args.repeats)
    # The chain-rule identity Σ_i c_i = L_A f, as a sanity check.
    lw, e2e = layerwise(seq_vars, batches[0]), seq_e2e(seq_vars, batches[0])
    gap = float(jnp.max(jnp.abs(lw.total.derivative - e2e.derivative)))
    scale = float(jnp.max(jnp.abs(e2e.derivative)))
    print(f"inline 11-layer ResNet-18: LEE (e2e) {n / t_seq:.1f} images/s; "
          f"layerwise (exact) {n / t_lw:.1f} images/s ({t_lw * 1e3:.0f} ms, "
          f"{t_lw / t_seq:.1f}× end to end); "
          f"max|Σc_i − L_A f| = {gap:.1e} (max|L_A f| = {scale:.1e})")

if __name__ == "__main__":
  main()
