"""The attention zoo: variants from the literature, one module each, stated as cascades with the
builder and compiled like softmax attention. `ZOO` names them for `attncc.load` and the CLI,
beside the core library's reference cascades."""

from __future__ import annotations

from collections.abc import Callable

from attncc.frontends.zoo import groups, hilo, linear, moh, routing
from attncc.frontends.zoo.stages import Staged
from attncc.ir import Cascade

ZOO: dict[str, Callable[..., Cascade]] = {}
"""Every zoo cascade by name, called with keyword options (see each function)."""

ZOO.update({f.__name__: f for f in (linear.linear_attention, linear.lightning_attention)})
ZOO.update({f.__name__: f for f in (routing.routing, moh.moh, hilo.hilo, groups.group_pose)})

STAGED: dict[str, Callable[..., Staged]] = {
    "routing": routing.routing_stages,
    "moh": moh.moh_stages,
    "hilo": hilo.hilo_stages,
}
"""The zoo cascades the tiled backends run as stages (attncc.frontends.zoo.stages), by name,
called with the same keyword options as their ZOO builders."""
