"""pixelplay: the Pixel Play'25 recipe (ResNet fine-tuning, voting, zero-shot) as a library.

Modules, in the order data flows through them: config (the one dataclass), data (find the
challenge, classes, samples, split, image loading), transforms (the augmentation),
pipeline (decoded cache, views, resumable batches), model (backbone, freezing, weights),
runtime (device, precision), train, checkpoint, zeroshot, predict (voting, submission),
score, demo (generated data). Notebooks and the CLI call `train.train(cfg)` and
`predict.predict(cfg)`.
"""

from .config import Config, make_config

__all__ = ["Config", "make_config"]
__version__ = "0.1.0"
