"""The cluster of an anomaly travels with its detection: /detect returns it, the database keeps it."""

from __future__ import annotations

from typing import Any

import pytest

from api.main import create_app
from core.schema import SequenceRecord
from core.settings import Settings


@pytest.fixture(scope="module")
def cluster_model(models: tuple[Any, Any], test_sequences: list[dict[str, Any]]) -> Any:
    from small_model.clusters.config import ClusterConfig
    from small_model.clusters.model import ClusterModel

    records = [SequenceRecord.model_validate(s) for s in test_sequences]
    anomalies = [r for r in records if r.label == 1]
    normal = [r for r in records if r.label == 0]
    return ClusterModel.fit(models[0], anomalies, normal=normal, config=ClusterConfig(mode="anomalies-only"))


async def test_detect_returns_and_stores_the_cluster(
    models: tuple[Any, Any], cluster_model: Any, db_url: str, test_sequences: list[dict[str, Any]]
) -> None:
    import httpx

    settings = Settings(database_url=db_url, workers=0)
    app = create_app(settings, detector=models[0], explainer=models[1], clusterer=cluster_model)
    anomalies = [{"log_entries": s["log_entries"]} for s in test_sequences if s["label"] == 1]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        body = (await client.post("/detect", json={"sequences": anomalies, "explain": "never"})).json()
        flagged = [d for d in body["detections"] if d["is_anomaly"]]
        assert flagged, "the tiny detector flags some generated anomalies"
        expected = cluster_model.predict([anomalies[body["detections"].index(d)]["log_entries"] for d in flagged])
        assert [(d["cluster_id"], d["cluster_description"]) for d in flagged] == expected
        assert all(d["cluster_id"] is None for d in body["detections"] if not d["is_anomaly"])
        stored = (await client.get(f"/detections/{flagged[0]['id']}")).json()
        assert (stored["cluster_id"], stored["cluster_description"]) == expected[0]


def test_the_cluster_model_takes_the_serving_detector(
    cluster_model: Any, tiny_detector_path: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One detector in the process: a cluster model fitted on the serving detector's features uses that
    detector; one fitted on another detector says so and keeps its own."""
    from api.main import load_models

    folder = cluster_model.save_pretrained(tmp_path / "clusters")
    settings = Settings(detector_path=tiny_detector_path, cluster_path=folder, load_explainer=False)
    detector, _, clusterer = load_models(settings)
    assert clusterer.detector is detector
    other = tmp_path / "other"
    cluster_model.meta["detector_version"] = "another-detector"
    cluster_model.save_pretrained(other)
    with caplog.at_level("WARNING"):
        detector, _, clusterer = load_models(settings.model_copy(update={"cluster_path": other}))
    assert clusterer.detector is not detector and "not of the serving one" in caplog.text
