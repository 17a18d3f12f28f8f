"""Chaos runs: push jobs through injected faults and check the promises from the ledger.

``conveyor chaos run SCENARIO`` starts its own workers and relay (and, where a scenario
breaks a service, its own broker or database instance), enqueues seeded jobs of the
``chaos.work`` type, injects the scenario's faults while they run, waits for quiescence and
then checks the invariants (:mod:`worker.chaos.invariants`). Every run is reproducible
from its seed.
"""
