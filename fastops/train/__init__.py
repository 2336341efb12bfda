"""Training of the reference models on synthetic shapes: ``python -m fastops.train MODEL``.

from fastops.train import TrainConfig, train
result = train(TrainConfig("unet", steps=100))
"""

from fastops.train.metrics import ConfusionMatrix, average_precision, mean_average_precision
from fastops.train.recipes import RECIPES, Recipe
from fastops.train.trainer import TrainConfig, TrainResult, evaluate, train

__all__ = [
    "RECIPES",
    "ConfusionMatrix",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "average_precision",
    "evaluate",
    "mean_average_precision",
    "train",
]
