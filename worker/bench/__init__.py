"""``conveyor bench``: Conveyor against plain Celery and Dramatiq, same broker, same machine.

:mod:`.runner` runs the comparison and reports it (table, JSON, PNG chart); the three
systems' jobs are in :mod:`.plain` (plain Celery, default settings, no Conveyor code on
its path), :mod:`.jobs` (a Conveyor job, every promise on) and :mod:`.dramatiq_jobs`
(Dramatiq, default settings). All three run the same body, :func:`.probe.record`, so the
harness's own cost is the same on every side. docs/benchmarks.md has the figures.
"""
