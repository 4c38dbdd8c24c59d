"""Evaluations beyond clean accuracy (../shared/reference/RECIPES.md, "Evaluation protocols"): one module per
protocol, each a pure function of a model's outputs or of a model and a batch, free of the trainer and of
the run directory (the evaluation tool reads the run and writes ``eval/<suite>.json``).

* :mod:`mixbench.evaluation.attacks`: FGSM and PGD in pixel space, adversarial top-1 error.
* :mod:`mixbench.evaluation.calibration`: expected calibration error, bin table, reliability diagram.
* :mod:`mixbench.evaluation.ood`: out-of-distribution detection metrics and the OOD sets on disk.
* :mod:`mixbench.evaluation.corruption`: CIFAR-C / Tiny-ImageNet-C loaders, seeded generated corruptions.
* :mod:`mixbench.evaluation.occlusion`: seeded patch occlusion, accuracy per masked fraction, its curve.
* :mod:`mixbench.evaluation.localization`: CAM boxes and weakly supervised localisation scores.
"""
