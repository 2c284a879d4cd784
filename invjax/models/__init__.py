"""Flax Linen models of the invariance papers, with named, capturable layers.

Every model maps NHWC images to logits, takes a ``train`` keyword (dropout,
batch norm) and exposes each layer, activations and pooling included, as a
named submodule, so ``model.apply(variables, x, capture_intermediates=True,
mutable=["intermediates"])`` returns per-layer activations under readable
paths (``conv1``, ``conv1_act``, ``pool1``, ..., ``logits``).
"""

from invjax.models._convnets import AllConvolutional
from invjax.models._convnets import SimpleConv
from invjax.models._convnets import VGG16D
from invjax.models._gcnn import C4GCNN
from invjax.models._gcnn import GroupConv
from invjax.models._gcnn import GroupMaxPool
from invjax.models._gcnn import LiftingConv
from invjax.models._gcnn import RotationPool
from invjax.models._gcnn import SpatialPool
from invjax.models._layers import ACTIVATIONS
from invjax.models._layers import Activation
from invjax.models._layers import GlobalAvgPool
from invjax.models._layers import MaxPool
from invjax.models._resnet import BasicBlock
from invjax.models._resnet import ResNet
from invjax.models._resnet import ResNet18
from invjax.models._resnet import ResNet34
from invjax.models._tipooling import apply_transformations
from invjax.models._tipooling import TIPooling
from invjax.models._tipooling import TransformationMaxPool

__all__ = (
    "ACTIVATIONS",
    "Activation",
    "AllConvolutional",
    "apply_transformations",
    "BasicBlock",
    "C4GCNN",
    "GlobalAvgPool",
    "GroupConv",
    "GroupMaxPool",
    "LiftingConv",
    "MaxPool",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "RotationPool",
    "SimpleConv",
    "SpatialPool",
    "TIPooling",
    "TransformationMaxPool",
    "VGG16D",
)
