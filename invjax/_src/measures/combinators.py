"""Measures built from streamed statistics: one value, or a ratio of two.

A `Statistic` is the part of a `Measure` that streams one quantity over the
data: init/update/merge over a mergeable state and a finalize that reads the
quantity off it. `single` makes a measure of one statistic, ``values = S``;
`ratio` makes a measure of two statistics streamed over the same blocks in
one pass,

    values = divide(N, D),

e.g. Quiroga et al.'s normalized variance NV = TV / SV and normalized
distance ND = TD / SD, the transformation spread of each unit relative to its
spread over the data. ``finalize`` also returns N (``"numerator"``) and D
(``"denominator"``), so per-feature-map values are the ratio of spatial means
(see `Measure.finalize`).

References:
  Quiroga, Torrents-Barrena, Lanzarini, Puig. "Invariance and
  same-equivariance measures for convolutional neural networks", CLEI
  Electron. J. 24(1) 2021 (normalized variance and distance).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax

from invjax._src import base

Array = jax.Array
State = Any


class Statistic(NamedTuple):
  """The init/update/merge/finalize of one streamed statistic.

  Attributes:
    init: ``LayerSpec -> state``.
    update: ``(state, Block) -> state``, ignoring masked rows and columns.
    merge: ``(state, state) -> state`` over disjoint sample sets.
    finalize: ``(state, spec) -> statistic``; an array of the activation's
      shape for `single` and `ratio`.
    unitwise: ``update``'s `base.Unitwise` split, when it has one.
  """
  init: Callable[[base.LayerSpec], State]
  update: Callable[[State, base.Block], State]
  merge: Callable[[State, State], State]
  finalize: Callable[[State, base.LayerSpec], Any]
  unitwise: base.Unitwise | None = None


def unitwise_statistic(init, reduce, fold, merge, finalize) -> Statistic:
  """A `Statistic` whose update is ``fold(state, reduce(state, block))``.

  For statistics whose units are independent; see `base.Unitwise`.
  """
  def update(state, block):
    return fold(state, reduce(state, block), block)

  return Statistic(init, update, merge, finalize,
                   base.Unitwise(reduce, fold))


class RatioState(NamedTuple):
  """The state of a `ratio` measure: its two statistics' states."""
  numerator: State
  denominator: State


def single(name: str, statistic: Statistic, *,
           settings: tuple[tuple[str, Any], ...] = (),
           requires: base.Requirements = base.Requirements(),
           check: Callable[[int, int], None] | None = None) -> base.Measure:
  """A `Measure` whose ``values`` are one statistic.

  Args:
    name: the measure's name.
    statistic: the streamed statistic; its state is the measure's.
    settings, requires, check: as in `Measure`.

  Returns:
    A `Measure` whose ``finalize`` gives ``{"values": statistic}``.
  """
  return base.Measure(
      name=name, init=statistic.init, update=statistic.update,
      merge=statistic.merge,
      finalize=lambda state, spec: {"values": statistic.finalize(state, spec)},
      settings=settings, requires=requires, check=check,
      unitwise=statistic.unitwise)


def ratio(name: str, numerator: Statistic, denominator: Statistic, *,
          divide: Callable[[Array, Array], Array],
          settings: tuple[tuple[str, Any], ...] = (),
          requires: base.Requirements = base.Requirements(),
          check: Callable[[int, int], None] | None = None) -> base.Measure:
  """A `Measure` of N / D for two statistics streamed in one pass.

  values = divide(N, D): both statistics see every block, so the ratio costs
  one pass over the data; states update and merge pairwise.

  Args:
    name: the measure's name.
    numerator: the statistic N.
    denominator: the statistic D.
    divide: ``(N, D) -> values``: the division rule for zero denominators,
      e.g. `stats.safe_divide` (0/0 → 1, x/0 → inf).
    settings, requires, check: as in `Measure`.

  Returns:
    A `Measure` with state `RatioState` whose ``finalize`` gives
    ``{"values": divide(N, D), "numerator": N, "denominator": D}``. To
    replace its update (e.g. by a fused kernel), ``_replace(update=...)``.
  """

  def init(spec: base.LayerSpec) -> RatioState:
    return RatioState(numerator.init(spec), denominator.init(spec))

  def update(state: RatioState, block: base.Block) -> RatioState:
    return RatioState(numerator.update(state.numerator, block),
                      denominator.update(state.denominator, block))

  def merge(a: RatioState, b: RatioState) -> RatioState:
    return RatioState(numerator.merge(a.numerator, b.numerator),
                      denominator.merge(a.denominator, b.denominator))

  def finalize(state: RatioState, spec: base.LayerSpec) -> Mapping[str, Array]:
    num = numerator.finalize(state.numerator, spec)
    den = denominator.finalize(state.denominator, spec)
    return {"values": divide(num, den), "numerator": num, "denominator": den}

  unitwise = None
  if numerator.unitwise and denominator.unitwise:
    nu, du = numerator.unitwise, denominator.unitwise
    unitwise = base.Unitwise(
        reduce=lambda state, block: RatioState(
            nu.reduce(state.numerator, block),
            du.reduce(state.denominator, block)),
        fold=lambda state, part, block: RatioState(
            nu.fold(state.numerator, part.numerator, block),
            du.fold(state.denominator, part.denominator, block)))

  return base.Measure(name=name, init=init, update=update, merge=merge,
                      finalize=finalize, settings=settings,
                      requires=requires, check=check, unitwise=unitwise)
