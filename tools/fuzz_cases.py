"""The inputs of ``tools/fuzz_cli.py``: seeded mutations of small models, pipelines and flags.

Each case is a seeded mutation of a small model (built in code, or a ``tests/filecheck`` text
file): truncated or bit-flipped bytes, edited ONNX text, a structurally broken proto (dangling
inputs, bad attributes, wrong tensor sizes, missing or escaping external data, odd versions),
or a malformed pipeline or flag.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field

__all__ = ["Case", "SAFE_PIPELINES", "SAFE_PASSES", "TEMP_MARKERS", "make_cases", "seed_models"]

# Passes that are quick and write nothing outside -o (no training, no visualize).
SAFE_PIPELINES = [
    "cse",
    "cleanup",
    "check",
    "shape-inference",
    "classify-vertices",
    "classify-vertices,grow-segments,partition-gezig",
    "partition-zig",
    "zero-groups{random=0.5 seed=1},eliminate-dead-branches,cleanup",
    "zero-groups{random=0.3 seed=2 kind=zig},prune-channels,cleanup",
    "check-validity",
    "repeat{max=3}(cse,remove-unused-nodes)",
    "to-inference,cleanup",
    "name-fix,identity-elimination,deduplicate-initializers",
]
SAFE_PASSES = sorted({p.split("{")[0].split("(")[0] for s in SAFE_PIPELINES for p in s.split(",")} - {"repeat"})
TEMP_MARKERS = (".otoir", ".tmp")


@dataclass
class Case:
    """One fuzz input.

    Attributes:
        kind: What was mutated (for the counts).
        argv: Arguments of ``otoir-opt`` (paths inside the case directory).
        stdin: Bytes for ``-`` input, or None.
        out_dir: The directory the outputs go to (checked for leftovers).
        outputs: Output files that must not exist after a non-zero exit.
    """

    kind: str
    argv: list[str]
    stdin: bytes | None = None
    out_dir: str = ""
    outputs: list[str] = field(default_factory=list)


# -- seed models ----------------------------------------------------------------------------

_CONV_TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,3,6,6] x) => (float[N,4] y)
<float[8,3,3,3] w1 = {W1}, float[8] b1 = {B1}, float[4,8,1,1] w2 = {W2}, int64[2] shape = {{0, -1}}>
{
  c1 = Conv <pads=[1,1,1,1], strides=[1,1]> (x, w1, b1)
  r1 = Relu (c1)
  p1 = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r1)
  c2 = Conv (p1, w2)
  g2 = GlobalAveragePool (c2)
  y = Reshape (g2, shape)
}
"""


def _conv_text(rng: random.Random) -> str:
    def values(n: int) -> str:
        return "{" + ",".join(f"{rng.uniform(-1, 1):.3f}" for _ in range(n)) + "}"

    return (_CONV_TEXT.replace("{W1}", values(8 * 27)).replace("{B1}", values(8)).replace("{W2}", values(32))
            .replace("{{", "{").replace("}}", "}"))


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seed_models(seed: int) -> list[tuple[str, bytes, str]]:
    """``(name, content, suffix)`` of the seed models: text and binary."""
    import otoir
    from otoir.zoo.random_dag import random_conv_dag

    rng = random.Random(seed)
    out = [("conv", _conv_text(rng).encode(), ".onnxtxt")]
    filecheck = os.path.join(_repo_root(), "tests", "filecheck")
    if os.path.isdir(filecheck):
        for name in sorted(os.listdir(filecheck)):
            if name.endswith(".onnxtxt") and name != "visualize.onnxtxt":
                with open(os.path.join(filecheck, name), encoding="utf-8") as f:
                    text = f.read()
                # a FileCheck file holds several models separated by '# -----' lines
                chunks = [[]]
                for line in text.splitlines():
                    if line.strip() == "# -----":
                        chunks.append([])
                    else:
                        chunks[-1].append(line)
                for i, chunk in enumerate(chunks):
                    if any(x.strip() and not x.lstrip().startswith("#") for x in chunk):
                        out.append((f"{name[:-8]}#{i}", "\n".join(chunk).encode(), ".onnxtxt"))
    with tempfile.TemporaryDirectory() as d:
        for i, (blocks, s) in enumerate(((3, seed), (4, seed + 1))):
            path = os.path.join(d, f"dag{i}.onnx")
            otoir.save(random_conv_dag(s, n_blocks=blocks), path)
            with open(path, "rb") as f:
                out.append((f"dag{i}", f.read(), ".onnx"))
        path = os.path.join(d, "conv.onnx")
        otoir.save(_text_model(out[0][1]), path)
        with open(path, "rb") as f:
            out.append(("convbin", f.read(), ".onnx"))
    return out


def _text_model(data: bytes):
    from otoir.io import load_bytes

    return load_bytes(data, name="seed")


# -- mutations ------------------------------------------------------------------------------


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, max(len(data), 1))]


def _bitflip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _bytes_noise(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b) + 1)
        op = rng.randrange(3)
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        if op == 0:
            b[i:i] = chunk
        elif op == 1:
            del b[i : i + len(chunk)]
        else:
            b[i : i + len(chunk)] = chunk
    return bytes(b)


_NUMBERS = ["0", "-1", "1", "2", "3", "-7", "1000000", "99999999999", "1e308", "nan", "inf"]


def _text_edit(rng: random.Random, data: bytes) -> bytes:
    import re

    text = data.decode("utf-8", "replace")
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        op = rng.randrange(5)
        i = rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:  # a number becomes another
            nums = list(re.finditer(r"-?\d+", lines[i]))
            if nums:
                m = rng.choice(nums)
                lines[i] = lines[i][: m.start()] + rng.choice(_NUMBERS) + lines[i][m.end() :]
        elif op == 3:  # an identifier becomes another (dangling or duplicate names)
            ids = list(re.finditer(r"\b[a-z][a-z0-9_]*\b", lines[i]))
            if ids:
                m = rng.choice(ids)
                lines[i] = lines[i][: m.start()] + rng.choice(["x", "y", "nowhere", "w1", "c1", "Conv"]) + lines[i][m.end() :]
        else:  # characters swapped
            line = lines[i]
            if len(line) > 2:
                j = rng.randrange(len(line) - 1)
                lines[i] = line[:j] + line[j + 1] + line[j] + line[j + 2 :]
    return ("\n".join(lines) + "\n").encode()


_ATTRS = {
    "strides": [[0, 0], [-1, 1], [1], [1, 1, 1], [1000000, 1]],
    "dilations": [[0, 1], [-2, -2], [1, 1, 1]],
    "pads": [[-1, 0, 0, 0], [1, 1], [100, 100, 100, 100]],
    "group": [0, -1, 3, 1000],
    "kernel_shape": [[0, 0], [5, 5], [1]],
    "axis": [-100, 99, 1],
    "perm": [[0, 0, 1, 2], [5, 4]],
}


def _proto_edit(rng: random.Random, data: bytes, model_dir: str) -> bytes:
    """A structural change to a binary model (``model_dir``: where external data files may go)."""
    import onnx

    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    g = proto.graph
    op = rng.randrange(13)
    nodes = list(g.node)
    if op == 0 and nodes:  # drop a node
        g.node.remove(rng.choice(nodes))
    elif op == 1 and nodes:  # dangling input
        n = rng.choice(nodes)
        if n.input:
            n.input[rng.randrange(len(n.input))] = rng.choice(["nowhere", "", n.output[0] if n.output else "z"])
    elif op == 2 and nodes:  # an attribute set to a bad value
        n = rng.choice(nodes)
        name = rng.choice(list(_ATTRS))
        value = rng.choice(_ATTRS[name])
        for a in list(n.attribute):
            if a.name == name:
                n.attribute.remove(a)
        n.attribute.append(onnx.helper.make_attribute(name, value))
    elif op == 3 and g.initializer:  # wrong raw data size
        t = rng.choice(list(g.initializer))
        if t.raw_data:
            t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))] if rng.random() < 0.7 else t.raw_data + b"\0\0\0"
        else:
            t.dims.append(rng.choice([2, 0, 7]))
    elif op == 4 and g.initializer:  # negative or huge dims
        t = rng.choice(list(g.initializer))
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([-1, 0, 2**40])
    elif op == 5 and g.initializer:  # dtype changed
        t = rng.choice(list(g.initializer))
        t.data_type = rng.choice([0, 2, 7, 8, 10, 16, 99])
    elif op == 6 and g.initializer:  # external data: missing file, escaping path, short file
        t = rng.choice(list(g.initializer))
        raw = t.raw_data
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        loc = rng.choice(["missing.data", "../escape.data", "/etc/passwd", "short.data", "ok.data"])
        if loc in ("short.data", "ok.data"):
            with open(os.path.join(model_dir, loc), "wb") as f:
                f.write(raw[: len(raw) // 2] if loc == "short.data" else raw)
        for k, v in (("location", loc), ("offset", "0"), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
    elif op == 7:  # versions
        if rng.random() < 0.5:
            proto.ir_version = rng.choice([0, 1, 3, 11, 99])
        elif proto.opset_import:
            proto.opset_import[0].version = rng.choice([1, 6, 23, 99])
    elif op == 8 and nodes:  # duplicate an output name
        a, b = rng.choice(nodes), rng.choice(nodes)
        if a.output and b.output:
            b.output[0] = a.output[0]
    elif op == 9 and g.output:  # undefined graph output
        g.output[0].name = "undefined_output"
    elif op == 10 and nodes:  # unknown op or domain
        n = rng.choice(nodes)
        if rng.random() < 0.5:
            n.op_type = rng.choice(["NoSuchOp", "Conv", "Relu", "Concat"])
        else:
            n.domain = "com.unknown"
    elif op == 11 and nodes:  # node order reversed (not topological)
        rev = list(reversed(nodes))
        del g.node[:]
        g.node.extend(rev)
    elif op == 12 and g.input:  # input shape changed
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            d.dim_value = rng.choice([0, 1, 5, 1000])
    return proto.SerializeToString()


def _bad_pipeline(rng: random.Random) -> str:
    base = rng.choice(SAFE_PIPELINES)
    op = rng.randrange(7)
    if op == 0:  # a random character inserted
        i = rng.randrange(len(base) + 1)
        return base[:i] + rng.choice("{}(),= \"'x-") + base[i:]
    if op == 1:  # truncated
        return base[: rng.randrange(len(base) + 1)]
    if op == 2:  # an unknown pass
        return base + "," + rng.choice(["nosuch", "Cse", "cse2", "-", "repeat"])
    if op == 3:  # a bad option value
        name = rng.choice(["zero-groups", "repeat", "check-validity", "partition-zig", "cse"])
        key = rng.choice(["random", "max", "seed", "ids", "kind", "strict", "bogus"])
        value = rng.choice(["-0.5", "1.5", "inf", "nan", "1e308", "-5", "0", "1000000000", "abc", "", "\"x y\"", "gezig:99"])
        nested = "(cse)" if name == "repeat" else ""
        return f"{name}{{{key}={value}}}{nested}"
    if op == 4:  # deep nesting
        depth = rng.randint(1, 30)
        return "repeat{max=2}(" * depth + "cse" + ")" * depth
    if op == 5:  # duplicate keys, odd spacing
        return "zero-groups{random=0.5 random=0.5}"
    return rng.choice(SAFE_PASSES) + "{" + "".join(rng.choice("ab=}{ ,") for _ in range(rng.randint(1, 8)))


def make_cases(count: int, seed: int, work: str) -> list[Case]:
    """Builds ``count`` seeded cases with their files under ``work``."""
    rng = random.Random(seed)
    seeds = seed_models(seed)
    cases: list[Case] = []
    kinds = ["truncate", "bitflip", "bytes", "text", "proto", "pipeline", "flags", "stdin", "valid"]
    weights = [3, 3, 2, 3, 5, 3, 2, 1, 1]
    for i in range(count):
        kind = rng.choices(kinds, weights)[0]
        case_dir = os.path.join(work, f"c{i:05d}")
        out_dir = os.path.join(case_dir, "out")
        os.makedirs(out_dir)
        name, data, suffix = rng.choice(seeds)
        binary = [s for s in seeds if s[2] == ".onnx"]
        text = [s for s in seeds if s[2] == ".onnxtxt"]
        if kind == "truncate":
            name, data, suffix = rng.choice(seeds)
            data = _truncate(rng, data)
        elif kind == "bitflip":
            name, data, suffix = rng.choice(binary + text[:1])
            data = _bitflip(rng, data)
        elif kind == "bytes":
            data = _bytes_noise(rng, data)
        elif kind == "text":
            name, data, suffix = rng.choice(text)
            data = _text_edit(rng, data)
        elif kind == "proto":
            name, data, suffix = rng.choice(binary)
            data = _proto_edit(rng, data, case_dir)
        in_path = os.path.join(case_dir, "in" + suffix)
        with open(in_path, "wb") as f:
            f.write(data)
        pipeline = _bad_pipeline(rng) if kind == "pipeline" else rng.choice(SAFE_PIPELINES)
        out = os.path.join(out_dir, "o" + rng.choice([".onnx", ".onnx", ".onnxtxt"]))
        argv = ["-p", pipeline, "-q"]
        outputs = [out]
        if kind == "flags":
            flag = rng.randrange(6)
            if flag == 0:
                argv += ["-o", rng.choice(["", out_dir, "/dev/null", os.path.join(case_dir, "nodir", "o.onnx")])]
                outputs = []
            elif flag == 1:
                argv += ["-o", out, "--elide-initializers-if-larger", rng.choice(["-5", "x", "0", "99999999999999999999"])]
            elif flag == 2:
                argv += ["-o", out, rng.choice(["--print-ir-after", "--print-ir-before"]), rng.choice(["nosuch", "cse", ",", ""])]
            elif flag == 3:
                rep = os.path.join(out_dir, "r.json")
                argv += ["-o", out, "--report-json", rng.choice([rep, out_dir, ""])]
                outputs.append(rep)
            elif flag == 4:
                fifo = os.path.join(out_dir, "fifo.onnx")
                os.mkfifo(fifo)
                argv += ["-o", fifo]
                outputs = []
            else:
                argv += ["-o", out, rng.choice(["--bogus", "-p", "--external-data", "--dump-ir-dir"])]
        else:
            argv += ["-o", out]
            if rng.random() < 0.15:
                argv.append("--external-data")
                outputs.append(out + ".data")
            if rng.random() < 0.1:
                argv.append("--verify")
        stdin = None
        if kind == "stdin":
            stdin = _bitflip(rng, data) if rng.random() < 0.5 else data
            argv = ["-", *argv]
        else:
            argv = [in_path, *argv]
        cases.append(Case(f"{kind}", argv, stdin, out_dir, outputs))
    return cases


# -- running and checking -------------------------------------------------------------------
