"""Fine-tune stage: train a backbone end to end (linear probe first, then discriminative learning
rates), or a small CNN from scratch, and leave the same artifacts as fit-head plus a checkpoint that
``embed`` accepts as ``finetuned:RUN``."""

from featpipe.finetune._bundle import FinetunedHead
from featpipe.finetune._config import AUGMENT_PRESETS, FinetuneConfig
from featpipe.finetune._data import build_transforms
from featpipe.finetune._train import FinetuneResult, finetune

__all__ = ["AUGMENT_PRESETS", "FinetuneConfig", "FinetuneResult", "FinetunedHead", "build_transforms", "finetune"]
