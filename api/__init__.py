"""The LogTriage service (FastAPI) and its commands (detect, tail, serve, worker, jobs)."""
