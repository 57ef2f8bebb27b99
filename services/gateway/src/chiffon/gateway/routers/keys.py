"""``/v1/keys`` (admin): issue, list, read and revoke API keys; ``/v1/me``: the caller."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse

from chiffon.core.telemetry import current_traceparent
from chiffon.eventstore import ConcurrencyConflict, EventStoreError
from chiffon.gateway.auth import Admin, Viewer
from chiffon.gateway.keys import BOOTSTRAP_KEY_ID, ApiKey, KeyAlreadyRevoked, KeyNotFound
from chiffon.gateway.problems import Conflict, NotFound, Unavailable
from chiffon.gateway.routers.common import READ, WRITE, optional_json, require_json
from chiffon.gateway.runtime import RUN_ID, GatewayDep
from chiffon.gateway.schemas import KeyCreate, KeyCreated, KeyPublic, KeyRevoke, KeysPublic, Me

router = APIRouter(prefix="/v1", tags=["keys"])


def key_public(key: ApiKey) -> KeyPublic:
    return KeyPublic(
        id=key.key_id,
        name=key.name,
        role=key.role,  # type: ignore[arg-type]
        prefix=key.prefix,
        created_at=key.created_at,
        created_by=key.created_by,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        revoked_by=key.revoked_by,
        revoke_reason=key.revoke_reason,
        active=key.usable(datetime.now(UTC)),
    )


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Issue an API key",
)
async def create_key(body: KeyCreate, gw: GatewayDep, principal: Admin) -> JSONResponse:
    """Issue a key with a role. The response holds the secret: it is never shown again."""
    try:
        key, token = await gw.api_keys.create(
            name=body.name,
            role=body.role,
            expires_at=body.expires_at,
            actor=principal.actor,
            trace=current_traceparent(),
        )
    except EventStoreError as error:
        raise Unavailable(f"the event store refused the key: {error}") from None
    gw.keys.put(key)  # usable on this replica at once; the others within milliseconds
    created = KeyCreated(**key_public(key).model_dump(), key=token)
    return JSONResponse(
        created.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/v1/keys/{key.key_id}", "Cache-Control": "no-store"},
    )


@router.get("/keys", response_model=KeysPublic, responses=READ, summary="List API keys")
async def list_keys(gw: GatewayDep, _: Admin) -> KeysPublic:
    """Every key ever issued (revoked ones too), without secrets."""
    return KeysPublic(keys=[key_public(k) for k in gw.keys.all()])


@router.get("/keys/{key_id}", response_model=KeyPublic, responses=READ, summary="Get an API key")
async def get_key(key_id: str, gw: GatewayDep, _: Admin) -> KeyPublic:
    key = gw.keys.get(key_id) if RUN_ID.fullmatch(key_id) else None
    if key is None:
        raise NotFound(f"no API key {key_id[:200]!r}")
    return key_public(key)


@router.post(
    "/keys/{key_id}/revoke",
    response_model=KeyPublic,
    responses=WRITE,
    dependencies=[Depends(optional_json)],
    summary="Revoke an API key",
)
async def revoke_key(
    key_id: str, gw: GatewayDep, principal: Admin, body: Annotated[KeyRevoke | None, Body()] = None
) -> KeyPublic:
    """The key is refused by every gateway replica within a second."""
    if not RUN_ID.fullmatch(key_id):
        raise NotFound(f"no API key {key_id[:200]!r}")
    if key_id == BOOTSTRAP_KEY_ID:
        raise Conflict(
            "the bootstrap key comes from CHIFFON_BOOTSTRAP_ADMIN_KEY: unset it to retire it"
        )
    try:
        key = await gw.api_keys.revoke(
            key_id,
            actor=principal.actor,
            reason=body.reason if body else None,
            trace=current_traceparent(),
        )
    except KeyNotFound as error:
        raise NotFound(str(error)) from None
    except KeyAlreadyRevoked as error:
        raise Conflict(str(error)) from None
    except ConcurrencyConflict:
        raise Conflict(f"API key {key_id!r} is being changed concurrently; retry") from None
    except EventStoreError as error:
        raise Unavailable(f"the event store refused the revocation: {error}") from None
    gw.keys.put(key)
    return key_public(key)


@router.get("/me", response_model=Me, responses=READ, summary="The calling key")
async def me(principal: Viewer) -> Me:
    key = principal.key
    return Me(id=key.key_id, name=key.name, role=key.role)  # type: ignore[arg-type]
