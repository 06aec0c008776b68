"""labelrefinery: Label Refinery (Bagherinezhad et al. 2018) for PyTorch image classifiers.

Train R1 on ground truth, let it relabel the training images with soft
predictions (refined labels), train a fresh R2 on them, and repeat.
"""

__version__ = "0.1.0"
