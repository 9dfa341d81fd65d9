"""Pure model data: read, inspect, cut and write legacy Paddle inference models. No engine knowledge."""

from bisect_lite.model.graph import Model, Op, Var
from bisect_lite.model.io import MODEL_FILE, PARAMS_FILE, load_model, save_model, write_model_files
from bisect_lite.model.slicing import extract, frontier, truncate

__all__ = [
    "MODEL_FILE",
    "PARAMS_FILE",
    "Model",
    "Op",
    "Var",
    "extract",
    "frontier",
    "load_model",
    "save_model",
    "truncate",
    "write_model_files",
]
