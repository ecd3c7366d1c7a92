"""Rebuild the experts the package ships: the default zoo's heads and eight fine-tunes.

    python scripts/build_shipped_zoo.py                    # fine-tune them here (~6 min, 2 cores)
    python scripts/build_shipped_zoo.py --from ZOO_HOME    # ship an already built default zoo

It fine-tunes the default zoo with ``experts: trained`` (or reads a built one whose
``zoo.json`` holds the default training settings) and writes ``heads.safetensors``,
``finetuned/<task>.safetensors`` and ``zoo.json`` (the training config, the base and fine-tuned
accuracies, each file's sha256 and the machine that built them) into
``src/rmtllmf/models/assets/tiny_vit_zoo/``. Fine-tuning is not bit-identical across CPU models
(docs/embedded-zoo.md), so a rebuild on another machine gives other experts; the test
``tests/test_shipped_zoo.py`` retrains one and checks its accuracy within a stated tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from rmtllmf.pools.base import PoolRecord
from rmtllmf.pools.tiny_vit_pool import ZooConfig, build_zoo
from rmtllmf.pools.zoo_config import shipped_zoo_dir

TARGET = Path(__file__).resolve().parents[1] / "src" / "rmtllmf" / "models" / "assets"
TARGET = TARGET / "tiny_vit_zoo"


def machine() -> dict[str, str]:
    """The CPU and library versions that trained the experts."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block
            fields.setdefault(key.strip(), value.strip())
        info["cpu"] = fields.get("model name", "")
        info["cpu_family_model"] = f"{fields.get('cpu family', '')}/{fields.get('model', '')}"
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="an already built zoo's directory")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "rmtllmf" / "zoo")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = ZooConfig(experts="trained")
    if args.source is None:
        home = build_zoo(args.cache, cfg, progress=True, workers=args.workers).root
    else:
        home = args.source
        built = ZooConfig.model_validate(PoolRecord.load(home / "zoo.json").config)
        if built.model_copy(update={"experts": "trained"}) != cfg:
            print(f"{home} was not built with the default settings; rebuild without --from")
            return 2
    record = PoolRecord.load(home / "zoo.json")
    missing = [t for t in cfg.tasks if t not in record.finetuned]
    if missing:
        print(f"{home} lacks the fine-tunes of {missing}; rebuild without --from")
        return 2
    if TARGET.exists():
        shutil.rmtree(TARGET)
    (TARGET / "finetuned").mkdir(parents=True)
    names = ["heads.safetensors", *(f"finetuned/{t}.safetensors" for t in cfg.tasks)]
    for name in names:
        shutil.copyfile(home / name, TARGET / name)
    manifest = {
        "config": cfg.model_dump(mode="json"),
        "accuracy": {"base": record.base, "finetuned": record.finetuned},
        "seconds": record.seconds,
        "built_on": machine(),
        "sha256": {n: hashlib.sha256((TARGET / n).read_bytes()).hexdigest() for n in names},
    }
    (TARGET / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    assert TARGET.resolve() == shipped_zoo_dir().resolve(), "install the package editable (-e)"
    print(f"wrote {len(names)} files and zoo.json to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
