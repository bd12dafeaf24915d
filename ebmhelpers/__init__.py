"""Shared code of the notebook series on compressing energy-based models.

What the notebooks import, one module per job:

* ``profiles``: the named run profiles and the settings they hand out (SGLD, speed-ups).
* ``runtime``: device, seeds, output folders, mixed precision per device, the banner of ``start``.
* ``checkpoints``: atomic checkpoint writes and verified loads.
* ``progress``: progress bars, widgets interactively and plain text headless.
* ``data``: MNIST and Fashion-MNIST as tensors in [-1, 1].
* ``models``: the energy networks, the baselines a profile names and the metric classifier.
* ``sampling``: SGLD (Algorithm 1) and the replay buffer (Algorithm 2).
* ``speedups``: the same SGLD chains with channels_last or torch.compile.
* ``loop``: the resumable training loop that PCD training and distillation share.
* ``training``: the PCD trainer with its divergence guard, snapshots and the metric classifier.
* ``pretrained``: the committed, pretrained baselines a profile loads instead of training them.
* ``metrics``: IS, FID, OOD detection, size, latency, throughput; ``Evaluator`` scores every model.
* ``quantization``, ``pruning``, ``distillation``: one module per compression method.
* ``objectives``: the distillation objectives beyond eq. 6 that ``tools.distill_study`` compares.
* ``objective_study``: that comparison's table read: seeds combined, the chosen objective, the targets.
* ``comparison``: the final table of every model, its findings and the interleaved relative latencies.
* ``budget``: the sampling-budget study (SGLD steps against quality, one rescaled step size per budget).
* ``toy``: the exact 2-D toy of notebook 00.
* ``plotting``: figures.
* ``results``: tables shared between notebooks.
* ``paper``: what the paper reports, transcribed with its sections.
* ``verdicts``: the rules: equivalence margins, intervals, "generates", "keeps quality".
* ``paper_report``: the protocol table and the paper's claims with their computed verdicts.
* ``notebooks``: where the notebooks are, their shared setup cell and the package code they show.

Around them, never imported by a notebook: ``tools`` (``cli``: ``python -m ebmhelpers``; ``runner``:
the headless main job; ``train_all``: the train-once job; ``bench``: throughput and the speed-up ladder;
``estimate``: counted FLOPs; ``report``: the README's results section; ``recipe_study``: the cpu baseline's PCD
recipes at equal budget, its training length and generation chain, on validation digits; ``distill_study``: the
distillation objectives at equal compute; ``chain_check``: every model behind the paper's verdicts scored again under
a second generation chain).
"""

__version__ = "0.1.0"
