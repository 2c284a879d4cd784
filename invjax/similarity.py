"""Representational similarity: CKA variants, streaming CKA and STIR.

See `invjax._src.similarity` for the formulas and references (Kornblith et
al. 2019; Song et al. 2012; Nguyen et al. 2021; Nanda et al. ICML 2022).
"""

from invjax._src.similarity import CKAAccumulator
from invjax._src.similarity import InversionResult
from invjax._src.similarity import LinearCKAState
from invjax._src.similarity import MinibatchCKAState
from invjax._src.similarity import StirResult
from invjax._src.similarity import cka_accumulator
from invjax._src.similarity import dataset_cka
from invjax._src.similarity import hsic_unbiased
from invjax._src.similarity import invert_representation
from invjax._src.similarity import linear_cka
from invjax._src.similarity import linear_cka_accumulator
from invjax._src.similarity import minibatch_cka_accumulator
from invjax._src.similarity import rbf_cka
from invjax._src.similarity import stir
from invjax._src.similarity import unbiased_cka

__all__ = (
    "CKAAccumulator",
    "InversionResult",
    "LinearCKAState",
    "MinibatchCKAState",
    "StirResult",
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
