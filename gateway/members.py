"""HTTP for the cluster's membership: list, add and remove nodes (actors/members.py).

A change is logged in the control group and returns once it is committed; the groups then
move toward the new placement on their own (fabric/core/reconfigure.py). ``GET`` answers from
this node's view, with each group it hosts as its Raft membership stands here.
"""

from __future__ import annotations

import msgspec

from syncfab.actors.members import MemberAdd, MemberRemove, member_refused
from syncfab.actors.results import Ok
from syncfab.gateway.responses import json_response, read_body, result_error
from syncfab.gateway.router import Request, Response, Router

REFUSALS = ("member_exists", "member_removed", "too_many_members", "too_few_members")
STATUS_OF_MEMBERS = dict.fromkeys(REFUSALS, 409)


class AddBody(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    address: str  # host:port, what the other nodes dial (its --peers entry)


def members_view(request: Request) -> dict[str, object]:
    core = request.runtime.core
    view = core.cluster_view()
    groups = [
        {"group": gid, "voters": list(g.raft.conf.voters), "learners": list(g.raft.conf.learners)}
        for gid, g in sorted(core.groups.items())
        if not g.raft.removed
    ]
    return {"node": core.id, "members": view["members"], "groups": groups}


async def list_members(request: Request) -> Response:
    return json_response(members_view(request))


async def add_member(request: Request) -> Response:
    body, bad = read_body(request, AddBody)
    if bad:
        return bad
    assert body is not None
    refused = member_refused(body.id, body.address)
    if refused is not None:
        return result_error(refused)
    return await _change(request, MemberAdd(body.id, body.address))


async def remove_member(request: Request) -> Response:
    node = request.match_info["id"]
    refused = member_refused(node)
    if refused is not None:
        return result_error(refused)
    return await _change(request, MemberRemove(node))


async def _change(request: Request, op: MemberAdd | MemberRemove) -> Response:
    result = await request.runtime.call(op)
    if isinstance(result, Ok):
        return json_response(result.value)
    return result_error(result, STATUS_OF_MEMBERS.get(result.code))


def add_routes(router: Router) -> None:
    router.add_get("/cluster/members", list_members)
    router.add_post("/cluster/members", add_member)
    router.add_delete("/cluster/members/{id}", remove_member)
