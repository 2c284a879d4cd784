"""Representational similarity: CKA variants, streaming CKA and STIR.

See `invjax._src.cka` (closed-form CKA), `invjax._src.cka_streaming`
(accumulators and `dataset_cka`) and `invjax._src.stir` for the formulas and
references (Kornblith et al. 2019; Song et al. 2012; Nguyen et al. 2021;
Nanda et al. ICML 2022). `as_result` turns their values (e.g. one per model
pair) into a `MeasureResult` that saves, plots and goes into sweep tables.
"""

from invjax._src.cka import hsic_unbiased
from invjax._src.cka import linear_cka
from invjax._src.cka import rbf_cka
from invjax._src.cka import unbiased_cka
from invjax._src.cka_streaming import CKAAccumulator
from invjax._src.cka_streaming import LinearCKAState
from invjax._src.cka_streaming import MinibatchCKAState
from invjax._src.cka_streaming import cka_accumulator
from invjax._src.cka_streaming import dataset_cka
from invjax._src.cka_streaming import linear_cka_accumulator
from invjax._src.cka_streaming import minibatch_cka_accumulator
from invjax._src.similarity_result import as_result
from invjax._src.stir import InversionResult
from invjax._src.stir import StirResult
from invjax._src.stir import invert_representation
from invjax._src.stir import stir

__all__ = (
    "CKAAccumulator",
    "InversionResult",
    "LinearCKAState",
    "MinibatchCKAState",
    "StirResult",
    "as_result",
    "cka_accumulator",
    "dataset_cka",
    "hsic_unbiased",
    "invert_representation",
    "linear_cka",
    "linear_cka_accumulator",
    "minibatch_cka_accumulator",
    "rbf_cka",
    "stir",
    "unbiased_cka",
)
