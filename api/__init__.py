"""The LogTriage service (FastAPI) and the ``logtriage`` command line."""
