"""Public data API: MNIST, CIFAR-10 and digits loaders, preprocessing, batching.

See `invjax._src.data_files` for where files are looked up, what gets
downloaded and how local copies are validated.
"""

from invjax._src.cifar10 import CIFAR10_CLASSES
from invjax._src.cifar10 import cifar10_label_names
from invjax._src.cifar10 import load_cifar10
from invjax._src.data import batches
from invjax._src.data import load_digits
from invjax._src.data import standardize
from invjax._src.data import stratified_indices
from invjax._src.data import stratified_subset
from invjax._src.data_files import DATA_ENV_VAR
from invjax._src.data_files import resolve_data_dir
from invjax._src.mnist import load_mnist
from invjax._src.mnist import MNIST_CLASS_COUNTS
from invjax._src.mnist import parse_idx
from invjax._src.mnist import read_idx

__all__ = (
    "batches",
    "CIFAR10_CLASSES",
    "cifar10_label_names",
    "DATA_ENV_VAR",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "MNIST_CLASS_COUNTS",
    "parse_idx",
    "read_idx",
    "resolve_data_dir",
    "standardize",
    "stratified_indices",
    "stratified_subset",
)
