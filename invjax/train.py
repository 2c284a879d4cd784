"""Training classifiers, with augmentation and invariance regularization.

    import invjax.train as T
    cfg = T.TrainConfig(steps=300, augment=invjax.transforms.rot90(),
                        regularizer=T.Regularizer(invjax.transforms.rot90()))
    state = T.fit(model, cfg, images, labels, workdir="runs/a")  # resumable
    T.evaluate(model, state.variables, x_test, y_test,
               transformations=invjax.transforms.rot90())
    # An ensemble: 8 seeds trained as one vmapped program, leaves (8, ...).
    ens = T.fit(model, cfg, images, labels, seeds=range(8))
    invjax.measure(invjax.capture.linen(model, ens.variables, ensemble=True),
                   images, ts, measures)        # a list of 8 results
"""

from invjax._src.evaluate import cross_entropy
from invjax._src.evaluate import evaluate
from invjax._src.evaluate import logits_fn
from invjax._src.train import fit
from invjax._src.train import load_checkpoint
from invjax._src.train_config import learning_rate_schedule
from invjax._src.train_config import make_optimizer
from invjax._src.train_config import Regularizer
from invjax._src.train_config import TrainConfig
from invjax._src.workdir import TrainState

__all__ = (
    "cross_entropy",
    "evaluate",
    "fit",
    "learning_rate_schedule",
    "load_checkpoint",
    "logits_fn",
    "make_optimizer",
    "Regularizer",
    "TrainConfig",
    "TrainState",
)
