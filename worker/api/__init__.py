"""The HTTP ingest API (``conveyor api``): FastAPI over the same ledger and broker as workers.

:func:`worker.api.app.create_api` builds the application from a
:class:`~worker.app.ConveyorApp`; nothing here connects to anything at import time.
See ``docs/api.md`` for the contract.
"""
