"""labelrefinery: Label Refinery (Bagherinezhad et al. 2018) for PyTorch image classifiers.

Train R1 on ground truth, let it relabel the training images with soft
predictions (refined labels), train a fresh R2 on them, and repeat.

The public API (the names below) covers a whole run (:func:`run` with a
:class:`RunConfig`), reading its results (:class:`RunDir`), and the pieces a
training script of your own can reuse: datasets, models, refined labels, the
distillation loss and the training engine. See the README's "Code map" for
which module holds what.
"""

from .chain import run
from .checkpoint import load_checkpoint, load_model
from .classifier import Classifier, load_classifier
from .config import DataConfig, ExecConfig, RefineConfig, RunConfig, TrainConfig, resolve_config
from .data import Dataset, ImageData, load_dataset
from .engine import fit, train_one_epoch
from .inference import predict
from .errors import CheckpointError, ConfigError, DataError, RunDirError, UserError
from .losses import distillation_loss, kl_divergence, soft_target_cross_entropy
from .models import ModelSpec, build_model
from .rundir import RunDir
from .targets import FrozenRefinery, LabelRecipe, RefineryTargets, StoredTargets, refined_labels
from .version import __version__

__all__ = [
    "CheckpointError", "Classifier", "ConfigError", "DataConfig", "DataError", "Dataset", "ExecConfig", "FrozenRefinery",
    "ImageData", "LabelRecipe", "ModelSpec", "RefineConfig", "RefineryTargets", "RunConfig", "RunDir",
    "RunDirError", "StoredTargets", "TrainConfig", "UserError", "__version__", "build_model",
    "distillation_loss", "fit", "kl_divergence", "load_checkpoint", "load_classifier", "load_dataset", "load_model",
    "predict", "refined_labels", "resolve_config", "run", "soft_target_cross_entropy", "train_one_epoch",
]
