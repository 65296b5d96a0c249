"""Dataset sources: every one becomes a :class:`Manifest`."""

from featpipe.data.manifest import SPLITS, TASKS, Manifest
from featpipe.data.sources import (
    HF_PREFIX,
    IMAGE_EXTENSIONS,
    detect_source,
    from_class_folders,
    from_csv,
    from_hf,
    from_label_lists,
    from_npz,
    from_split_folders,
    load_dataset,
    normalize_split_name,
)
from featpipe.data.splitting import check_fractions, stratified_split

__all__ = [
    "HF_PREFIX",
    "IMAGE_EXTENSIONS",
    "Manifest",
    "SPLITS",
    "TASKS",
    "check_fractions",
    "detect_source",
    "from_class_folders",
    "from_csv",
    "from_hf",
    "from_label_lists",
    "from_npz",
    "from_split_folders",
    "load_dataset",
    "normalize_split_name",
    "stratified_split",
]
