"""The model: architectures, the model file and its card, and the one place a model meets a device.

This subpackage owns the CNN architectures and their registry
(:mod:`~georaster_cnn.model.architectures`), the self-describing safetensors model
file (:mod:`~georaster_cnn.model.modelfile`, its card validated by
:mod:`~georaster_cnn.model._card`), the classifier that runs windows through a model
on ``cpu``/``cuda``/``mps`` (:mod:`~georaster_cnn.model._inference`) and dense
evaluation, the trunk run once per block (:mod:`~georaster_cnn.model._dense`). It
imports the core, :mod:`georaster_cnn.cluster` (a worker finds a shipped model's
bytes there) and :mod:`georaster_cnn.io` (a model file is written through staging).
"""
