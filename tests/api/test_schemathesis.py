"""schemathesis (every check, 50 examples per operation) against the real app behind uvicorn on PostgreSQL.

The same run against any server (``logtriage serve``, keys set with ``LOGTRIAGE_API_KEYS='["k"]'``),
from the repository root (``schemathesis.toml`` holds the settings):

    .venv/bin/st run http://127.0.0.1:8000/openapi.json --checks all --max-examples 50 -H 'X-API-Key: k'
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from core.settings import Settings
from tests.api.conftest import serve

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[2]
KEY = "schemathesis-key"


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    models: tuple[Any, Any], pg_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=pg_url, workers=1, api_keys=[KEY], explain_wait_seconds=5.0)
    app = create_app(settings, detector=models[0], explainer=models[1])
    st = Path(sys.executable).with_name("st")
    report = tmp_path / "report"
    with serve(app) as url:
        command = [
            str(st),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--seed",
            "17",
            "-H",
            f"X-API-Key: {KEY}",
            "--report",
            "junit",
            "--report-dir",
            str(report),
            "--no-color",
        ]
        done = await asyncio.to_thread(
            subprocess.run,
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            env={k: v for k, v in os.environ.items() if k != "SCHEMATHESIS_HOOKS"},
        )
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, output[-8000:]
    assert "No issues found" in output, output[-3000:]
