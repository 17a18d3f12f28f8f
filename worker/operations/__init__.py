"""What the operator's tools share, the CLI and the HTTP API alike.

- :mod:`~worker.operations.dlq`: dead-letter triage (list, show, replay, purge, audit);
- :mod:`~worker.operations.stats`: queue depths and ages, relay lag (``conveyor queues``,
  ``/v1/queues``, the metrics' ledger gauges);
- :mod:`~worker.operations.views`: the JSON shapes of jobs that ``--json`` and the API print.
"""
