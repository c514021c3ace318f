"""Worker for test_ddp.py: H2SPG erasing under DistributedDataParallel (gloo, CPU).

Run by ``torchrun --nproc_per_node=2 ddp_worker.py OUT_DIR``; each rank writes a JSON summary.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from otoir.analyses.validity import select_redundant
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for
    from otoir.train.torch_backend import copy_state_to_model, train_torch
    from otoir.zoo import build

    module, example = build("demosupnet", width=0.125, relu=True)
    model = export_torch(module, example)  # same on every rank (deterministic)
    groups = groups_for(model, "gezig")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((128, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 128))
    data = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.distributed.DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=sampler, drop_last=True)
    ddp = torch.nn.parallel.DistributedDataParallel(module)
    steps = 2 * len(loader)
    res = train_torch(ddp, loader, torch.nn.functional.cross_entropy, groups, optimizer="h2spg",
                      selector=lambda s, k: select_redundant(groups, s, k), epochs=2, lr=0.05, momentum=0.9,
                      target=0.5, warmup_steps=steps // 4, projection_steps=steps // 2, progress=False)
    copy_state_to_model(ddp, model)
    checksum = float(sum(float(p.detach().double().abs().sum()) for p in module.parameters()))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "zero": [bool(z) for z in res.zero_groups], "groups": len(groups),
                   "checksum": checksum, "steps": res.steps}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
