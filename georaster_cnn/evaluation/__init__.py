"""Evaluation: accuracy of a model against reference labels, and the report that holds it.

This subpackage owns the confusion matrix, the metrics derived from it and the
report's files (:mod:`~georaster_cnn.evaluation.report`), and
:func:`~georaster_cnn.evaluate` / :func:`~georaster_cnn.evaluate_chips`
(:mod:`~georaster_cnn.evaluation.assessment`, which matches labelled cells to the
prediction graph's cells, and :mod:`~georaster_cnn.evaluation.chipwise`). It sits above prediction and training: it classifies
through the former and reads labels through the latter.
"""
