"""imgcls: the image-classification library behind the workshop bot.

Importing this package is cheap: torch and fastai load only inside the training and
prediction workers. Start with `imgcls.store.Store`.
"""
from .errors import ImgclsError
from .types import IngestOutcome, Prediction, TrainResult, TrainSpec

__version__ = "0.1.0"
__all__ = ["ImgclsError", "IngestOutcome", "Prediction", "TrainResult", "TrainSpec", "__version__"]
