"""The same prediction graph on a Dask distributed cluster (worker processes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from georaster_cnn import GeoModel, open_raster, predict

distributed = pytest.importorskip("distributed")


@pytest.mark.slow
def test_predict_on_local_cluster_matches_threaded(
    tmp_path: Path, make_raster: Callable[..., Path], make_model: Callable[..., GeoModel]
) -> None:
    """Workers unpickle the classifier from the model file's bytes; results are identical."""
    path = make_raster(tmp_path, "scene.tif", height=150, width=130, count=3, nan_holes=True)
    model = make_model(3, ("a", "b", "c"), arch="cnn")  # a registered arch workers know
    local = predict(open_raster(path), model, stride=16).compute()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        remote = predict(open_raster(path, chunks=64), model, stride=16).compute()
    np.testing.assert_array_equal(remote["class"].values, local["class"].values)
    np.testing.assert_allclose(
        remote["probability"].values, local["probability"].values, rtol=1e-5, atol=1e-6
    )
