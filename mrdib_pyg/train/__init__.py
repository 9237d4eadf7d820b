r"""Training: options (:mod:`~mrdib_pyg.train.config`), building a run from them
(:mod:`~mrdib_pyg.train.build`), the loop (:mod:`~mrdib_pyg.train.trainer`), plug-ins
(:mod:`~mrdib_pyg.train.plugins`), the command line and the alpha search."""
from mrdib_pyg.train.config import TrainConfig
from mrdib_pyg.train.trainer import EarlyStopping, Trainer, TrainResult, seed_everything
from mrdib_pyg.train.build import (build_model, build_mrdib, build_trainer, enable_replace_mode,
                                   load_data, run)
from mrdib_pyg.train.plugins import MRdIBPlugin, TrainingPlugin

__all__ = ['TrainConfig', 'Trainer', 'TrainResult', 'EarlyStopping', 'seed_everything',
           'build_model', 'build_mrdib', 'build_trainer', 'enable_replace_mode', 'load_data',
           'run', 'MRdIBPlugin', 'TrainingPlugin']
