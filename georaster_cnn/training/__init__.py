"""Training: labels, labelled windows, validation splits, chip sets and the fit loop.

This subpackage owns everything from reference data to a trained model: label
rasters and how they meet their rasters (:mod:`~georaster_cnn.training.labels`),
vector labels (:mod:`~georaster_cnn.training.vector_labels`), windows cut from
rasters (:mod:`~georaster_cnn.training.windows`), spatially blocked and stratified
splits (:mod:`~georaster_cnn.training.splits`), chip sets and their readers
(:mod:`~georaster_cnn.training.chipdata`, :mod:`~georaster_cnn.training.chipfiles`),
the training loop (:mod:`~georaster_cnn.training._fit`) and the public
:func:`~georaster_cnn.train` / :func:`~georaster_cnn.train_chips`
(:mod:`~georaster_cnn.training.trainer`). It imports the core, cluster, io and model
layers, never prediction.
"""
