"""TV's and SV's sums of one tile from one read: a Pallas (Triton) kernel.

For a tile x of shape (B, T, F) (samples × transformations × units) NV needs
two marginals that XLA computes in separate kernels, so every tapped
activation is read twice (`benchmarks/hlo_traffic.py`):

* per sample b, the variance over transformations, summed over samples:
  tv[f] = Σ_b w_b · s(x[b, :, f])  with s the row statistic;
* per transformation t, shifted sums over samples:
  s1[t, f] = Σ_b w_b (x[b, t, f] − c[t, f]),  s2[t, f] = Σ_b w_b (x − c)².

This kernel walks each column block of F once, a few samples at a time, and
keeps both in registers. The row statistic uses the same shifted-sum form
as `stats.block_moments` (shift: the first transformation moved by the mean
offset of the first k), so it agrees with the XLA path to float32 round-off.

Triton blocks have power-of-two sizes: loads past T, F or B are masked to 0
and carry weight 0. The grid splits F into blocks and B into a few ranges so
that small layers still fill the GPU; the ranges' partial sums are added
outside (the shifts are shared, so partial sums add exactly).

NV (``implementation="pallas"``) runs it compiled on CUDA and in Pallas'
interpret mode elsewhere, slowly: that is there to test the kernel on CPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

Array = jax.Array

# Registers per program: a (rows, T, F) tile of about this many floats.
_TILE_ELEMENTS = 4096
# Programs to aim for, so that layers with few units still fill the GPU.
_TARGET_PROGRAMS = 1024


def _layout(b: int, t: int, f: int) -> tuple[int, int, int, int, int]:
  """(TP, BF, BB, rows per range, ranges) for a (b, t, f) tile."""
  tp = pl.next_power_of_2(t)
  bf = min(pl.next_power_of_2(f), max(16, _TILE_ELEMENTS // tp))
  bb = max(1, _TILE_ELEMENTS // (tp * bf))
  bb = min(bb, pl.next_power_of_2(b))
  blocks = math.ceil(f / bf)
  # Each range writes 2·T·F partial sums: at most B/16 ranges keep them
  # under 1/8 of the tile's T·F·B.
  ranges = max(1, min(math.ceil(b / bb), math.ceil(_TARGET_PROGRAMS / blocks),
                      math.ceil(b / 16)))
  rows = math.ceil(math.ceil(b / ranges) / bb) * bb
  return tp, bf, bb, rows, math.ceil(b / rows)


def _kernel(x_ref, wb_ref, wt_ref, c_ref, tv_ref, s1_ref, s2_ref, *, b, t, f,
            tp, bf, bb, rows, head, statistic, ddof):
  fi, r = pl.program_id(0), pl.program_id(1)
  f0 = fi * bf
  fs = f0 + jnp.arange(bf)
  ts = jnp.arange(tp)
  f_ok, t_ok = fs < f, ts < t

  wt = pltriton.load(wt_ref.at[pl.ds(0, tp)], mask=t_ok, other=0.)
  head_w = jnp.where(ts < head, wt, 0.)
  head_n = jnp.maximum(jnp.sum(head_w), 1.)
  n_t = jnp.sum(wt)
  dof = n_t - ddof
  tile_ok = t_ok[:, None] & f_ok[None, :]
  c = pltriton.load(c_ref.at[pl.ds(0, tp), pl.ds(f0, bf)], mask=tile_ok,
                    other=0.)

  def body(j, acc):
    tv, s1, s2 = acc
    b0 = r * rows + j * bb
    b_ok = (b0 + jnp.arange(bb)) < b
    x = pltriton.load(
        x_ref.at[pl.ds(b0, bb), pl.ds(0, tp), pl.ds(f0, bf)],
        mask=b_ok[:, None, None] & tile_ok[None], other=0.)
    x0 = pltriton.load(x_ref.at[pl.ds(b0, bb), pl.ds(0, 1), pl.ds(f0, bf)],
                       mask=b_ok[:, None, None] & f_ok[None, None, :],
                       other=0.)
    wb = pltriton.load(wb_ref.at[pl.ds(b0, bb)], mask=b_ok, other=0.)
    # Per sample: moments over transformations around a shift near the mean.
    offset = jnp.sum((x - x0) * head_w[None, :, None], axis=1, keepdims=True)
    shift = x0 + offset / head_n
    d = x - shift
    wd = d * wt[None, :, None]
    d1, d2 = jnp.sum(wd, axis=1), jnp.sum(wd * d, axis=1)        # (bb, bf)
    m2 = jnp.maximum(d2 - d1 * (d1 / jnp.maximum(n_t, 1.)), 0.)
    stat = jnp.where(dof > 0, m2 / jnp.where(dof > 0, dof, 1.), 0.)
    if statistic == "std":
      stat = jnp.sqrt(stat)
    # Masked rows are selected away, not multiplied by 0: a sample left out
    # for non-finite activations would otherwise turn the sums into NaN.
    keep = wb > 0
    tv = tv + jnp.sum(jnp.where(keep[:, None], stat * wb[:, None], 0.), axis=0)
    # Per transformation: shifted sums over samples.
    d = jnp.where(keep[:, None, None], x - c[None], 0.)
    e = d * wb[:, None, None]
    return tv, s1 + jnp.sum(e, axis=0), s2 + jnp.sum(e * d, axis=0)

  zeros = jnp.zeros((tp, bf), jnp.float32)
  steps = rows // bb
  tv, s1, s2 = jax.lax.fori_loop(
      0, steps, body, (jnp.zeros((bf,), jnp.float32), zeros, zeros))
  pltriton.store(tv_ref.at[r, pl.ds(f0, bf)], tv, mask=f_ok)
  pltriton.store(s1_ref.at[r, pl.ds(0, tp), pl.ds(f0, bf)], s1, mask=tile_ok)
  pltriton.store(s2_ref.at[r, pl.ds(0, tp), pl.ds(f0, bf)], s2, mask=tile_ok)


def tile_sums(x: Array, sample_weights: Array, transform_weights: Array,
              shift: Array, *, statistic: str, ddof: int, head: int,
              interpret: bool = False) -> tuple[Array, Array, Array]:
  """(tv (F,), s1 (T, F), s2 (T, F)) of a (B, T, F) float32 tile; see above.

  Args:
    x: (B, T, F) float32 activations.
    sample_weights: (B,) 0/1 weights (the sample mask).
    transform_weights: (T,) 0/1 weights (the transformation mask).
    shift: (T, F) SV's shift c.
    statistic: ``"variance"`` or ``"std"``: s of TV's rows.
    ddof: delta degrees of freedom of s.
    head: k, the leading transformations whose mean offset moves the
      per-sample shift (as in `stats.block_moments`).
    interpret: run in Pallas' interpret mode (any backend).
  """
  b, t, f = x.shape
  tp, bf, bb, rows, ranges = _layout(b, t, f)
  kernel = functools.partial(
      _kernel, b=b, t=t, f=f, tp=tp, bf=bf, bb=bb, rows=rows, head=head,
      statistic=statistic, ddof=ddof)

  # The kernel has no derivative rule; say so instead of failing inside
  # Pallas' autodiff.
  @jax.custom_jvp
  def call(*operands):
    return pl.pallas_call(
        kernel, grid=(math.ceil(f / bf), ranges),
        out_shape=(jax.ShapeDtypeStruct((ranges, f), jnp.float32),
                   jax.ShapeDtypeStruct((ranges, t, f), jnp.float32),
                   jax.ShapeDtypeStruct((ranges, t, f), jnp.float32)),
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=3),
        interpret=interpret, name="invjax_tile_sums")(*operands)

  @call.defjvp
  def _no_derivative(primals, tangents):
    del primals, tangents
    raise ValueError(
        "implementation='pallas' has no gradients; differentiate NV with "
        "implementation='xla' (the default)")

  tv, s1, s2 = call(x.astype(jnp.float32), sample_weights.astype(jnp.float32),
                    transform_weights.astype(jnp.float32),
                    shift.astype(jnp.float32))
  return tv.sum(0), s1.sum(0), s2.sum(0)
