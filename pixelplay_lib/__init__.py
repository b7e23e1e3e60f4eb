"""pixelplay: Pixel Play'25 (50 animal classes, 10 without training images) as a library.

The recipe (ResNet fine-tuning, test-time votes) plus four more experts (attribute model,
the pretrained ImageNet head, image-text zero-shot, a probe on its embeddings) fused by one
decision rule tuned with a leave-classes-out protocol. Data flows: config -> data ->
pipeline / inference -> train -> experts (fusion) -> predict -> score. README's "What is
where" says what each module does. Notebooks and the CLI call `train.train(cfg)` /
`train.launch_train(cfg)` and `predict.predict(cfg)`.
"""

from .config import Config, make_config

__all__ = ["Config", "make_config"]
__version__ = "0.2.0"
