"""Transformation sets (group actions on images) to measure invariance over.

See `invjax._src.transforms` for the conventions: angles in degrees,
counter-clockwise as displayed; rotation and scale about the image centre;
bilinear warps through `dm_pix.affine_transform`; exact inverses.
"""

from invjax._src.actions import Action
from invjax._src.actions import AffineAction
from invjax._src.actions import ComposedAction
from invjax._src.actions import FlipAction
from invjax._src.actions import Rot90Action
from invjax._src.transforms import affine
from invjax._src.transforms import check_set
from invjax._src.transforms import flips
from invjax._src.transforms import identity
from invjax._src.transforms import NotATransformationSet
from invjax._src.transforms import product
from invjax._src.transforms import rot90
from invjax._src.transforms import rotation
from invjax._src.transforms import scale
from invjax._src.transforms import TransformationSet
from invjax._src.transforms import translation
from invjax._src.transforms_tmeasures import paper_sets
from invjax._src.transforms_tmeasures import rotation_uniform
from invjax._src.transforms_tmeasures import scale_uniform
from invjax._src.transforms_tmeasures import translation_uniform
from invjax._src.transforms_tmeasures import uniform_rotation

__all__ = (
    "Action",
    "AffineAction",
    "ComposedAction",
    "FlipAction",
    "NotATransformationSet",
    "Rot90Action",
    "TransformationSet",
    "affine",
    "check_set",
    "flips",
    "identity",
    "paper_sets",
    "product",
    "rot90",
    "rotation",
    "rotation_uniform",
    "scale",
    "scale_uniform",
    "translation",
    "translation_uniform",
    "uniform_rotation",
)
