"""Fine-tune stage: train a backbone end to end (linear probe first, then discriminative learning
rates), or a small CNN from scratch, and leave the same artifacts as fit-head plus a checkpoint that
``embed`` accepts as ``finetuned:RUN``."""


from featpipe.finetune._budget import parse_duration, seconds_since_process_start
from featpipe.finetune._config import AUGMENT_PRESETS, SCHEDULES, FinetuneConfig
from featpipe.lazy import lazy_attributes

# the training code imports torch: loaded on first use, so reading a pipeline file stays light
_LAZY = {"FinetunedHead": "_bundle", "build_transforms": "_data", "FinetuneResult": "_train", "finetune": "_train",
         "cross_fit": "_crossfit", "cross_fit_done": "_crossfit:is_done", "folds_of": "_crossfit", "OOF_FILE": "_crossfit", "RECORD_FILE": "_crossfit"}

__all__ = ["AUGMENT_PRESETS", "SCHEDULES", "FinetuneConfig", "parse_duration", "seconds_since_process_start", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
