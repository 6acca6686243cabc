"""Evaluation: segmentation metrics and the report tables built from them.

Two metric conventions coexist in the polyp literature and pseudoseg reports
both, always labelled:

* the **paper** convention (:class:`~pseudoseg.evaluation.metrics.PaperMetrics`):
  per-image Dice and IoU of the prediction thresholded at 0.5, at the model's
  working resolution, as in the momentum pseudo-labelling paper;
* the **PraNet** convention (:class:`~pseudoseg.evaluation.metrics.PraNetMetrics`):
  the community benchmark metrics computed with ``pysodmetrics`` at the mask's
  native resolution (meanDice, meanIoU, weighted F-measure, S-measure,
  E-measure, MAE).

A model of several classes is scored per class and as the mean over
classes (:class:`~pseudoseg.evaluation.metrics.ClassMetrics` for images,
:class:`~pseudoseg.evaluation.volume_metrics.VolumeMetrics` for volumes), a
class absent from both prediction and truth being skipped, not counted as 1.

:mod:`pseudoseg.evaluation.report` writes per-test-set tables (JSON, CSV,
Markdown) and seed-averaged experiment grids whose legends name the
convention of every column.
"""
