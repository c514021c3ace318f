"""The torch backend under DistributedDataParallel: torchrun, 2 CPU processes, gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_h2spg_under_ddp_reaches_the_same_exact_sparsity_on_every_rank(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker, str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # every rank made the same partition and projection and ends with identical weights
    assert ranks[0]["zero"] == ranks[1]["zero"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    # exactly the target number of zero groups
    assert sum(ranks[0]["zero"]) == ranks[0]["groups"] // 2
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8
