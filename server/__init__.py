"""The HTTP service (``facegallery serve``, extra ``server``): FastAPI over the same gallery API as the CLI.

Endpoints parse the request, call one gallery function and render the dataclass it returns with ``to_dict()``,
the same JSON the CLI prints with ``--json``. :func:`server.app.create_app` builds the application;
:func:`server.launch.serve` runs it under uvicorn.
"""
