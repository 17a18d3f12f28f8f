"""Conveyor's reference jobs, one module per domain: imported only where
``CONVEYOR_TASK_MODULES`` names them (``conveyor.tasks.demo``, ``conveyor.tasks.webhooks``)."""

if __name__ != "conveyor.tasks":  # a second copy would register its jobs twice
    raise ImportError(f"import conveyor.tasks, not {__name__}: it is not a top-level package")
