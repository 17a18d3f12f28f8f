"""``/v1/catalog``: the job types the workers declared, which producers may enqueue."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.keys import Principal, Scope
from conveyor.worker.api.problems import AUTHENTICATED, documented
from conveyor.worker.api.schemas import CatalogView
from conveyor.worker.app import ConveyorApp
from conveyor.worker.catalog import catalog_view


def catalog_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/catalog", tags=["catalog"])
    Reader = Annotated[Principal, Depends(auth.require(Scope.READ))]

    @router.get(
        "",
        summary="The job types workers declared",
        response_model=CatalogView,
        responses=documented(*AUTHENTICATED),
    )
    def list_catalog(_who: Reader) -> dict[str, Any]:
        """Each job's name, queue, payload JSON Schema, retry policy and the version of the
        worker that declared it last, by name. `POST /v1/jobs` validates against it."""
        return {"items": catalog_view(app.ledger.catalog())}

    return router
