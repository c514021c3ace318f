"""The main job: compress two built-in networks on real data (MNIST, shipped), on CPU.

1. DemoSupNet (OTOv3 Figure 1) in erasing mode: H2SPG removes whole segments (GeZIGs).
2. A ResNet-style network in pruning mode: DHSPG removes channels (ZIGs).

Each is trained once, the zero structures are cut out, the sub-network's outputs are checked
against the trained full network's (ONNX Runtime, fp32), and a before/after report is printed.
Each job is one ``otoir-erase{…}`` / ``otoir-prune{…}`` pipeline run (:func:`otoir.compress`);
the demo prints the ``otoir-opt`` command that runs the same pipeline on the ONNX Runtime backend.
The sub-networks are written to ``--out`` (``demosupnet_erased.onnx``, ``resnet_pruned.onnx``)::

    otoir-demo [--out out] [--epochs N] [--backend torch|ort] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main", "otoir_opt_command", "PAPER_TABLE1_DEMOSUPNET"]

#: OTOv3 Table 1, DemoSupNet on Fashion-MNIST (baseline -> H2SPG).
PAPER_TABLE1_DEMOSUPNET = {
    "FLOPs": ("209M", "107M"),
    "params": ("0.82M", "0.45M"),
    "top-1": ("84.9%", "84.7%"),
}


def _paper_row() -> str:
    p = PAPER_TABLE1_DEMOSUPNET
    return ("paper (OTOv3 Table 1, DemoSupNet, Fashion-MNIST, full width): "
            f"FLOPs {p['FLOPs'][0]} -> {p['FLOPs'][1]}, params {p['params'][0]} -> {p['params'][1]}, "
            f"top-1 {p['top-1'][0]} -> {p['top-1'][1]}")


def otoir_opt_command(name: str, kw: dict, input_shape: tuple[int, ...], pipeline: str, out: str) -> str:
    """The ``otoir-opt`` command running ``pipeline`` on the built-in network ``name``.

    The model stays ONNX there, so a ``backend=torch`` option becomes ``backend=ort``.
    """
    import dataclasses

    from otoir.infra import PassManager

    passes = [dataclasses.replace(p, backend="ort") if getattr(p, "backend", "auto") == "torch" else p
              for p in PassManager.from_text(pipeline).passes]
    args = {k: int(v) if isinstance(v, bool) else v for k, v in kw.items()}
    args.update(in_channels=input_shape[0], input="x".join(str(d) for d in input_shape))
    zoo = f"zoo:{name}?" + "&".join(f"{k}={v}" for k, v in args.items())
    return f"otoir-opt '{zoo}' -p '{','.join(p.to_text() for p in passes)}' --report -o {out}"


def main(argv: list[str] | None = None) -> int:
    """Runs the main job; returns the exit status."""
    ap = argparse.ArgumentParser(prog="otoir-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out", help="directory for the sub-networks and reports (default: out)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per network (default: 5, --quick: 1)")
    ap.add_argument("--width", type=float, default=0.5, help="DemoSupNet width multiplier (1.0 = the paper's 0.82M params)")
    ap.add_argument("--backend", choices=("torch", "ort"), default="torch", help="training backend (default: torch)")
    ap.add_argument("--quick", action="store_true", help="tiny widths and one epoch (a smoke test, ~1 minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("otoir-demo: error: the main job needs torch: pip install 'otoir[torch]'", file=sys.stderr)
        return 2

    import otoir
    from otoir.data import load_dataset
    from otoir.errors import OtoirError
    from otoir.zoo import build

    epochs = args.epochs or (1 if args.quick else 5)
    os.makedirs(args.out, exist_ok=True)
    ds = load_dataset("mnist")
    jobs = [
        ("demosupnet", dict(width=0.125 if args.quick else args.width, relu=True), "erase", 0.5, "demosupnet_erased.onnx"),
        ("resnet_basic", dict(width=4) if args.quick else {}, "prune", 0.5, "resnet_pruned.onnx"),
    ]
    reports = {}
    for name, kw, mode, target, fname in jobs:
        torch.manual_seed(args.seed)
        module, _ = build(name, **kw, in_channels=ds.input_shape[0])
        example = torch.from_numpy(ds.train_x[:2])
        print(f"== {name} ({', '.join(f'{k}={v}' for k, v in kw.items()) or 'default width'}), mode={mode}, "
              f"target sparsity {target}, {epochs} epoch(s) on {ds.name} ({len(ds.train_x)} train / "
              f"{len(ds.val_x)} held-out), backend {args.backend}", flush=True)
        t0 = time.perf_counter()
        try:
            res = otoir.compress(module, ds, mode=mode, target_sparsity=target, epochs=epochs, lr=1e-3, variant="adam",
                                 backend=args.backend, example_inputs=example, seed=args.seed,
                                 progress=not args.quiet)
        except OtoirError as exc:
            print(f"otoir-demo: error: {name}: {exc}", file=sys.stderr)
            return 1
        path = os.path.join(args.out, fname)
        otoir.save(res.model, path)
        print(res.report.to_text())
        print(f"the same pipeline in otoir-opt: {otoir_opt_command(name, kw, ds.input_shape, res.pipeline, fname)}")
        print(f"wall time: {time.perf_counter() - t0:.1f} s; wrote {path}")
        if name == "demosupnet":
            print(_paper_row())
        print(flush=True)
        reports[name] = res.report.to_dict()
    otoir.io.atomic_write_text(os.path.join(args.out, "report.json"), json.dumps(reports, indent=2, default=str) + "\n")
    return 0


def console_main() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
