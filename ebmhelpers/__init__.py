"""Shared code of the notebook series on compressing energy-based models.

One module per job: ``profiles`` (settings), ``runtime`` (device, seeds, folders, checkpoints),
``data``, ``models``, ``sampling`` (SGLD, replay buffer), ``training`` (PCD trainer, classifier),
``metrics`` (IS, FID, OOD, size, latency), ``plotting``, ``results`` (tables shared between
notebooks), ``notebooks`` (the main job) and one module per compression method.
"""

__version__ = "0.1.0"
