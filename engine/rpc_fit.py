"""How much of a model's weights and KV cache lands on this machine and on each RPC worker (pure: no llama.cpp).

Tensors follow their layer (`blk.N.*`); the input embedding stays here; the output layer (`output*`, or a copy of
`token_embd` when the model ties them, as llama.cpp makes) goes where the split puts layer n_layer.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from engine import units
from engine.fit import OVERHEAD_BYTES, Fit, verdict_for
from engine.kv import kv_layout
from engine.rpc_split import LOCAL, layer_devices, parse_endpoints, parse_weights, plan
from engine.settings import LoadSettings

_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class Placement:
    device: str  # LOCAL or a worker's HOST:PORT
    layers: int  # repeating layers held (the output layer is not counted)
    output: bool  # holds the output layer (and its logits compute buffer)
    weights: int
    kv_cache: int


def placements(info, settings: LoadSettings) -> list[Placement]:
    """One Placement per device, this machine first; [] when the settings name no workers."""
    endpoints = parse_endpoints(settings.rpc)
    if not endpoints:
        return []
    n_layer = info.n_layers
    devices = layer_devices(n_layer, plan(n_layer, parse_weights(settings.rpc_split, len(endpoints))))
    weights = [0] * (len(endpoints) + 1)
    tied = not any(t.name == "output.weight" for t in info.tensors)
    for t in info.tensors:
        if m := _BLOCK.match(t.name):
            weights[devices[min(int(m.group(1)), n_layer - 1)]] += t.n_bytes
        elif t.name.startswith("output"):
            weights[devices[n_layer]] += t.n_bytes
        else:
            weights[0] += t.n_bytes
            if tied and t.name == "token_embd.weight":
                weights[devices[n_layer]] += t.n_bytes  # llama.cpp duplicates it as the output matrix
    kv = [0] * (len(endpoints) + 1)
    layout = kv_layout(
        info, settings.n_ctx, settings.type_k, settings.type_v, settings.n_ubatch, settings.swa_full
    )
    for layer in layout.layers:
        kv[devices[layer.index]] += layer.bytes_k + layer.bytes_v
    names = [LOCAL, *(str(e) for e in endpoints)]
    return [
        Placement(name, devices[:n_layer].count(i), devices[n_layer] == i, weights[i], kv[i])
        for i, name in enumerate(names)
    ]


def describe(places: list[Placement]) -> str:
    """One line per device: 'this machine: 6 layers, weights 190 MB, KV cache 9 MB'."""
    lines = []
    for p in places:
        where = "this machine" if p.device == LOCAL else f"worker {p.device}"
        output = " + output" if p.output else ""
        lines.append(f"{where}: {p.layers} layers{output}, weights {units.size(p.weights)}, "
                     f"KV cache {units.size(p.kv_cache)}")  # fmt: skip
    return "\n".join(lines)


def local_fit(fit: Fit, places: list[Placement]) -> Fit:
    """The fit verdict for this machine's share only: the workers hold (and check) the rest."""
    here = places[0]
    total = here.weights + here.kv_cache + OVERHEAD_BYTES
    return dataclasses.replace(fit, weights=here.weights, kv_cache=here.kv_cache, total=total,
                               verdict=verdict_for(total, fit.available))  # fmt: skip
