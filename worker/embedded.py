"""The embedded default: kombu's SQLAlchemy transport over a SQLite file.

kombu polls that transport once a second and offers no option for it: its transport
options all go to ``create_engine``, which rejects unknown names. With one message per
poll per worker process, that caps a demo at about two jobs a second, so Conveyor sets
the transport's class-level interval when (and only when) it runs embedded.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy as sqla_transport

EMBEDDED_POLL_S = 0.05


def tune_embedded_transport() -> None:
    """Poll the SQLite broker every ``EMBEDDED_POLL_S`` seconds instead of every second."""
    sqla_transport.Transport.polling_interval = EMBEDDED_POLL_S
