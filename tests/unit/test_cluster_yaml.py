"""cluster.yaml passes Ray's own launcher validation (no cloud calls)."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config


def test_cluster_yaml_is_valid():
    config = yaml.safe_load((Path(__file__).parents[2] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
