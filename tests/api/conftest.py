"""Fixtures of the service tests: a tiny real detector and explainer, trained once per session,
and the app on a SQLite file or on a fresh PostgreSQL database."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from api.main import create_app
from core.settings import Settings
from tests.db.conftest import db_url, pg_server, pg_url  # noqa: F401  (the database fixtures)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)

TINY_BERT: dict[str, Any] = {"scratch_layers": 2, "scratch_hidden": 48, "scratch_heads": 2, "scratch_intermediate": 96,
             "seq_heads": 2, "seq_intermediate": 96, "expert_hidden": 48, "head_hidden": 16}  # fmt: skip


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 generated sequences (easy difficulty) with the splits."""
    from data_gen import data_splitter, log_sequence_generator

    folder = tmp_path_factory.mktemp("synthetic")
    data = folder / "seqs.json"
    assert (
        log_sequence_generator.main(
            ["--num-sequences", "400", "--difficulty", "easy", "--seed", "3", "--output", str(data), "--quiet"]
        )
        == 0
    )
    assert data_splitter.main(["--input", str(data), "--output-dir", str(folder / "splits"), "--quiet"]) == 0
    return folder / "splits"


@pytest.fixture(scope="session")
def tiny_detector_path(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny supervised MoE-BERT detector (random 2-layer BERT), really trained."""
    from small_model.moe_train import TrainArgs, train_detector

    out = tmp_path_factory.mktemp("detector") / "artifact"
    args = TrainArgs(train_file=synthetic / "train.json", val_file=synthetic / "val.json", output_dir=out,
                     encoder="mini-scratch", threads=1, progress=False, batch_size=16, epochs=6.0, mlm_epochs=1.0,
                     lr=2e-3, seq_hidden=48, min_steps=1, **TINY_BERT)  # fmt: skip
    return train_detector(args)


@pytest.fixture(scope="session")
def tiny_explainer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 base with a LoRA adapter from a short QLoRA run on toy data."""
    from large_model.train import run_training
    from large_model.train_args import TrainLargeArgs
    from tests.large_model.tiny import make_tiny_base, write_toy_data

    root = tmp_path_factory.mktemp("explainer")
    base = make_tiny_base(root / "base")
    data = write_toy_data(root / "toy", n=24)
    args = TrainLargeArgs(data=data, output=root / "explainer", base=str(base), backend="peft", device="cpu",
                          dtype="fp32", max_steps=3, batch_size=4, lr=5e-3, warmup_steps=1, save_every=0,
                          progress=False)  # fmt: skip
    return Path(run_training(args).output)


@pytest.fixture(scope="session")
def models(tiny_detector_path: Path, tiny_explainer_path: Path) -> tuple[Any, Any]:
    """The two tiny models, loaded once."""
    from large_model.inference import Explainer
    from small_model.registry import load_detector

    return load_detector(tiny_detector_path), Explainer.from_pretrained(
        tiny_explainer_path, device="cpu", max_new_tokens=8
    )


@pytest.fixture(scope="session")
def test_sequences(synthetic: Path) -> list[dict[str, Any]]:
    """Held-out generated sequences, normal and anomalous."""
    return json.loads((synthetic / "test.json").read_text(encoding="utf-8"))


AppFactory = Callable[..., Any]


@pytest.fixture
def make_client(models: tuple[Any, Any], db_url: str) -> AppFactory:  # noqa: F811
    """``async with make_client(**settings) as client``: the real app (lifespan run) on the test database."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(database_url=db_url, **{"workers": 1, "explain_wait_seconds": 30.0, **overrides})
        app = create_app(settings, detector=models[0], explainer=models[1])
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
                client.app = app  # type: ignore[attr-defined]
                yield client

    return factory


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` behind a real uvicorn server on a free local port (in a thread); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture
def make_server(models: tuple[Any, Any], db_url: str) -> Callable[..., Any]:  # noqa: F811
    """``with make_server(**settings) as url``: the real app behind uvicorn on the test database."""

    @contextmanager
    def factory(**overrides: Any) -> Iterator[str]:
        settings = Settings(database_url=db_url, **{"workers": 1, "explain_wait_seconds": 30.0, **overrides})
        with serve(create_app(settings, detector=models[0], explainer=models[1])) as url:
            yield url

    return factory


@pytest.fixture
def serve_app(models: tuple[Any, Any], db_url: str) -> AppFactory:  # noqa: F811
    """``with serve_app(**settings) as (base_url, app)``: the real app in a real uvicorn server on a free port."""

    @contextmanager
    def factory(**overrides: Any) -> Iterator[tuple[str, Any]]:
        settings = Settings(database_url=db_url, **{"workers": 1, **overrides})
        app = create_app(settings, detector=models[0], explainer=models[1])
        with serve(app) as url:
            yield url, app

    return factory
