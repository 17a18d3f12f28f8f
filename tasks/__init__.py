"""Conveyor's built-in jobs, one module per domain. Workers import every module here."""
