"""``celery -A worker.celery_app`` entry point (Flower, ``celery inspect``).

Conveyor's own commands build the app with :func:`worker.app.create_app`; this module
exists for Celery's CLI, which wants a module attribute named ``app``.
"""

from conveyor.config import load_settings
from conveyor.worker.app import create_app

app = create_app(load_settings())
