"""GPU node types: cloud instance types -> GPU model, count and memory, and the node types of a cluster.yaml.

The table is the one place instance types are described; memory is what nvidia-smi reports (MiB / 1024),
a little under the marketing figure (an "80 GB" A100 reports 80 GiB, a "48 GB" L40S 45 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Gpu:
    model: str
    memory_gib: float


T4 = Gpu("T4", 15360 / 1024)
L40S = Gpu("L40S", 46068 / 1024)
A10G = Gpu("A10G", 23028 / 1024)
L4 = Gpu("L4", 23034 / 1024)
A100_40 = Gpu("A100-40GB", 40960 / 1024)
A100_80 = Gpu("A100-80GB", 81920 / 1024)
H100 = Gpu("H100", 81559 / 1024)
H200 = Gpu("H200", 143771 / 1024)

#: AWS instance type -> (GPUs per node, GPU)
INSTANCE_GPUS: dict[str, tuple[int, Gpu]] = {
    **{f"g4dn.{s}": (1, T4) for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": (4, T4), "g4dn.metal": (8, T4),
    **{f"g5.{s}": (1, A10G) for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g5.12xlarge": (4, A10G), "g5.24xlarge": (4, A10G), "g5.48xlarge": (8, A10G),
    **{f"g6.{s}": (1, L4) for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6.12xlarge": (4, L4), "g6.24xlarge": (4, L4), "g6.48xlarge": (8, L4),
    **{f"g6e.{s}": (1, L40S) for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6e.12xlarge": (4, L40S), "g6e.24xlarge": (4, L40S), "g6e.48xlarge": (8, L40S),
    "p4d.24xlarge": (8, A100_40), "p4de.24xlarge": (8, A100_80),
    "p5.4xlarge": (1, H100), "p5.48xlarge": (8, H100), "p5e.48xlarge": (8, H200), "p5en.48xlarge": (8, H200),
}
#: AWS instance families with accelerators: an instance of one that the table lacks is refused, not
#: taken for a CPU node (its GPUs would go unplanned)
ACCELERATED_FAMILIES = ("g", "p", "gr", "dl", "trn", "inf", "vt", "f")


@dataclass(frozen=True)
class NodeType:
    """One node type of a cluster file: its GPUs (0 for CPU nodes) and the custom resources it offers."""

    name: str
    instance: str
    gpus: int
    gpu: Gpu | None
    resources: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.name} ({self.instance}, no GPU)"
        return f"{self.name} ({self.gpus}x {self.gpu.model} {self.gpu.memory_gib:.0f} GiB)"


class ClusterFileError(ValueError):
    pass


def load_cluster(path: str | Path) -> dict[str, NodeType]:
    """Node types of a Ray cluster launcher file, GPUs from their instance types (unknown ones refused)."""
    p = Path(path).expanduser()
    try:
        tree = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterFileError(f"cannot read cluster file {p}: {e}") from None
    types = (tree or {}).get("available_node_types") if isinstance(tree, dict) else None
    if not isinstance(types, dict):
        raise ClusterFileError(f"{p}: no available_node_types")
    out = {}
    for name, node in types.items():
        instance = str((node.get("node_config") or {}).get("InstanceType", ""))
        declared = dict(node.get("resources") or {})
        if instance in INSTANCE_GPUS:
            gpus, gpu = INSTANCE_GPUS[instance]
        elif declared.get("GPU") or _accelerated(instance):
            raise ClusterFileError(f"{p}: node type {name} ({instance or 'no InstanceType'}) has GPUs of an instance "
                                   f"type orchestrator/plan/hardware.py does not know: add it to INSTANCE_GPUS")
        else:
            gpus, gpu = 0, None
        gpus = int(declared.get("GPU", gpus))
        out[name] = NodeType(name, instance, gpus, gpu if gpus else None, frozenset(declared))
    return out


def _accelerated(instance: str) -> bool:
    """Whether an instance type's family (the letters before its generation digit) has accelerators."""
    family = instance.split(".")[0]
    letters = family[: next((i for i, c in enumerate(family) if c.isdigit()), len(family))]
    return bool(instance) and letters in ACCELERATED_FAMILIES
