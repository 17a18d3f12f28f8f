"""What Conveyor shows about itself: the outcome chain's observers and the probes.

- :mod:`~worker.observability.metrics`: Prometheus counters, histograms and ledger gauges;
- :mod:`~worker.observability.logs`: JSON log lines, never a payload;
- :mod:`~worker.observability.tracing`: OpenTelemetry traces from enqueue to every run;
- :mod:`~worker.observability.sentry`: one error event per dead job;
- :mod:`~worker.observability.probes`: ``/healthz``, ``/readyz`` and ``/metrics`` of workers
  and relays;
- :mod:`~worker.observability.flower`: Flower behind a login.

The first four are the observers of :mod:`worker.outcomes`, in that order.
"""
