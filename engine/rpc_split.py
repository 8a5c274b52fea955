"""Where a model's layers land when llama.cpp splits it across this machine and RPC workers (pure: no llama.cpp).

llama.cpp keeps the first layers on the local CPU and spreads the rest over the listed devices by
`tensor_split` (llama-model.cpp, `get_layer_buft_list`); `layer_devices` replays that rule so the fit estimate
shows the same placement the load will make.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass

MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS in ggml-rpc.h
DEFAULT_PORT = 50052
LOCAL = "local"


class SplitError(ValueError):
    """A malformed --rpc or --rpc-split value; the message says what is wrong."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def parse_endpoint(text: str) -> Endpoint:
    """HOST:PORT (an IPv6 host in brackets, [::1]:50052)."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise SplitError(f"'{text}' is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or any(c.isspace() or c in "/@,[]" for c in host) or len(host) > 253:
        raise SplitError(f"'{text}' has no valid host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SplitError(f"'{text}': the port must be a number from 1 to 65535")
    return Endpoint(host, int(port))


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """'HOST:PORT[,HOST:PORT...]' -> endpoints; empty text -> no workers."""
    if not text.strip():
        return ()
    endpoints = tuple(parse_endpoint(part) for part in text.split(","))
    if len(endpoints) > MAX_WORKERS:
        raise SplitError(f"{len(endpoints)} workers given; llama.cpp takes at most {MAX_WORKERS}")
    if len(set(endpoints)) != len(endpoints):
        raise SplitError("the same worker is listed twice")
    return endpoints


def parse_weights(text: str, n_workers: int) -> tuple[float, ...]:
    """'LOCAL,W1,W2...' shares (any scale); empty -> equal shares for this machine and every worker."""
    if not text.strip():
        return (1.0,) * (n_workers + 1)
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise SplitError(f"'{text}' is not a list of numbers like 1,1,2") from None
    if len(weights) != n_workers + 1:
        raise SplitError(
            f"{len(weights)} shares given for {n_workers + 1} devices (this machine first, then each worker)"
        )
    if any(not w >= 0 or w == float("inf") for w in weights) or sum(weights) <= 0:
        raise SplitError("shares must be finite, not negative, and not all zero")
    return weights


@dataclass(frozen=True)
class SplitPlan:
    """What to hand llama.cpp: layers offloaded to the workers and the workers' shares of them."""

    n_gpu_layers: int  # counts the output layer, as llama.cpp does
    tensor_split: tuple[float, ...]  # one share per worker


def plan(n_layer: int, weights: tuple[float, ...]) -> SplitPlan:
    """The first share of the n_layer + 1 layers (repeating + output) stays local; the rest go to the workers."""
    total = sum(weights)
    local = round((n_layer + 1) * weights[0] / total)
    if weights[0] > 0:
        local = max(local, 1)
    return SplitPlan(n_gpu_layers=n_layer + 1 - local, tensor_split=tuple(weights[1:]))


def layer_devices(n_layer: int, split: SplitPlan) -> list[int]:
    """Device of each layer 0..n_layer (n_layer is the output layer): 0 = local, i = worker i. Same rule
    as llama.cpp's load_tensors."""
    i_gpu_start = max(n_layer + 1 - split.n_gpu_layers, 0)
    act = min(split.n_gpu_layers, n_layer + 1)
    total = sum(split.tensor_split)
    cuts, running = [], 0.0
    for share in split.tensor_split:
        running += share
        cuts.append(running / total if total else 1.0)
    out = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act or not split.tensor_split:
            out.append(0)
        else:
            index = bisect.bisect_right(cuts, (il - i_gpu_start) / act)
            out.append(1 + min(index, len(cuts) - 1))
    return out


# What ggml-rpc prints before it aborts the process when a worker's connection breaks (ggml-rpc.cpp).
RPC_LOST_MARK = "Remote RPC server crashed"
