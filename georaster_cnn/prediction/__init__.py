"""Prediction: the input contract and the lazy blockwise graph from a raster to class probabilities.

This subpackage owns :func:`~georaster_cnn.predict` and
:func:`~georaster_cnn.check_inputs` (:mod:`~georaster_cnn.prediction.blockwise`):
checking that a raster fits a model (bands, data range), planning blocks with
their halos, normalising per block and classifying every window, densely when the
architecture allows. Writing the result is :mod:`georaster_cnn.io`'s job
(:func:`~georaster_cnn.write_prediction`). It imports the core,
:mod:`georaster_cnn.cluster`, :mod:`georaster_cnn.io` and :mod:`georaster_cnn.model`.
"""
