"""The tools around the notebooks, which the notebooks never import: ``cli`` (``python -m ebmhelpers``),
``runner`` (the headless main job), ``bench`` (throughput and the speed-up ladder) and ``estimate``
(counted FLOPs of the whole series under a profile)."""
