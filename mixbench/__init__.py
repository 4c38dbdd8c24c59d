"""mixbench: a benchmark toolbox for mixup data augmentation in image classification."""

__version__ = "0.1.0"
