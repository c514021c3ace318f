"""Safe output (issue 10, items 3 and 4): special files, symlinks, modes, crash-safe external
data, write errors naming the path, and external data resolved against the model file."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import otoir
import otoir.io as oio
from otoir.errors import InputError, OutputError
from otoir.testing import cli, one_line

sys.path.insert(0, os.path.dirname(__file__))
from test_io import X, make_model, run  # noqa: E402


def weights(path) -> np.ndarray:
    return otoir.load(path).graph.initializers["w"].const_value.numpy()


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src" / "in.onnx"
    path.parent.mkdir()
    otoir.save(make_model(), path)
    return path


# -- special files --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory", "chardev"])
def test_refuses_to_replace_a_special_file(tmp_path, src, kind):
    if kind == "fifo":
        target = tmp_path / "out.onnx"
        os.mkfifo(target)
    elif kind == "directory":
        target = tmp_path / "out.onnx"
        target.mkdir()
    else:
        target = "/dev/null"
    before = os.stat(target)
    with pytest.raises(OutputError, match="not a regular file"):
        otoir.save(make_model(), target)
    for suffix_path in ([str(target)] if kind != "chardev" else []):
        with pytest.raises(OutputError, match="not a regular file"):
            oio.atomic_write_text(suffix_path, "x")
    code, out, err = cli(src, "-p", "cse", "-o", target)
    assert code == 2
    assert str(target) in one_line(err) and "not a regular file" in err
    after = os.stat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)  # still the same kind of file
    assert sorted(os.listdir(tmp_path)) == sorted(["src", *(["out.onnx"] if kind != "chardev" else [])])


def test_report_json_and_dump_dir_refuse_special_files(tmp_path, src):
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    code, _, err = cli(src, "-p", "cse", "--report-json", fifo, "-o", tmp_path / "o.onnx")
    assert code == 2 and "--report-json" in one_line(err)
    assert not (tmp_path / "o.onnx").exists()
    plain = tmp_path / "file"
    plain.write_text("x")
    code, _, err = cli(src, "-p", "cse", "--dump-ir-dir", plain)
    assert code == 2 and "not a directory" in one_line(err)


@pytest.mark.parametrize("out", ["", "missing-dir/o.onnx"])
def test_bad_output_paths_exit_2(tmp_path, src, out):
    target = "" if not out else str(tmp_path / out)
    code, stdout, err = cli(src, "-p", "cse", "-o", target)
    assert code == 2 and stdout == ""
    line = one_line(err)
    assert ("empty" in line) if not out else (target in line and "does not exist" in line)
    with pytest.raises(OutputError):
        otoir.save(make_model(), target)


# -- symlinks -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".onnx", ".onnxtxt"])
def test_symlink_is_written_through(tmp_path, suffix):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / ("target" + suffix)
    otoir.save(make_model(seed=1), target)
    link = tmp_path / ("link" + suffix)
    link.symlink_to(target)
    otoir.save(make_model(seed=2), link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_allclose(run(otoir.load(target), X), run(make_model(seed=2), X), rtol=1e-6, atol=1e-6)
    assert sorted(os.listdir(real_dir)) == ["target" + suffix]  # temporaries beside the target, removed
    assert sorted(os.listdir(tmp_path)) == ["link" + suffix, "real"]


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.onnx"
    link.symlink_to(tmp_path / "new.onnx")
    otoir.save(make_model(), link)
    assert link.is_symlink() and (tmp_path / "new.onnx").is_file()


def test_external_data_through_a_symlink(tmp_path):
    # same directory: written through, data beside both
    link = tmp_path / "link.onnx"
    link.symlink_to("m.onnx")
    otoir.save(make_model(), link, external_data=True, size_threshold_bytes=0)
    assert sorted(os.listdir(tmp_path)) == ["link.onnx", "m.onnx", "m.onnx.data"]
    np.testing.assert_allclose(run(link, X), run(make_model(), X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run(tmp_path / "m.onnx", X), run(make_model(), X), rtol=1e-6, atol=1e-6)
    # another directory: readers of the link would not find the data, so refused
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    far = tmp_path / "far.onnx"
    far.symlink_to(real_dir / "m.onnx")
    with pytest.raises(OutputError, match="symlink"):
        otoir.save(make_model(), far, external_data=True)
    assert os.listdir(real_dir) == []


# -- permission bits ------------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode(tmp_path, umask_027):
    otoir.save(make_model(), tmp_path / "a.onnx")
    otoir.save(make_model(), tmp_path / "b.onnxtxt")
    otoir.save(make_model(), tmp_path / "c.onnx", external_data=True, size_threshold_bytes=0)
    oio.atomic_write_text(tmp_path / "d.json", "{}")
    for name in ("a.onnx", "b.onnxtxt", "c.onnx", "c.onnx.data", "d.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name


@pytest.mark.parametrize("name", ["m.onnx", "m.onnxtxt", "r.json"])
def test_existing_file_keeps_its_mode(tmp_path, name):
    path = tmp_path / name
    path.write_text("old")
    os.chmod(path, 0o600)
    if name.endswith(".json"):
        oio.atomic_write_text(path, "{}")
    else:
        otoir.save(make_model(), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() != b"old"


def test_report_json_mode_through_the_cli(tmp_path, umask_027):
    from otoir.zoo.random_dag import random_conv_dag

    src = tmp_path / "dag.onnx"
    otoir.save(random_conv_dag(3, n_blocks=2), src)
    rep = tmp_path / "r.json"
    code, _, err = cli(src, "-p", "cse", "--report-json", rep, "-o", tmp_path / "o.onnx", "-q")
    assert code == 0, err
    assert json.loads(rep.read_text())["verified"] is True
    assert stat.S_IMODE(os.stat(rep).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "o.onnx").st_mode) == 0o640


# -- write errors ---------------------------------------------------------------------------


def test_write_error_names_the_output_path(tmp_path, monkeypatch):
    def full_disk(model, p):
        with open(p, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(oio.write, "_save_inline", full_disk)
    out = tmp_path / "o.onnx"
    with pytest.raises(OutputError) as info:
        otoir.save(make_model(), out)
    assert str(info.value) == f"cannot write '{out}': No space left on device"
    assert os.listdir(tmp_path) == []
    src = tmp_path / "in.onnxtxt"  # text: written without _save_inline
    otoir.save(make_model(), src)
    code, _, err = cli(src, "-p", "cse", "-o", out)
    line = one_line(err)
    assert code == 2 and str(out) in line and ".otoir" not in line
    assert sorted(os.listdir(tmp_path)) == ["in.onnxtxt"]


def test_text_write_error_names_the_path(tmp_path, monkeypatch):
    def broken_replace(a, b):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(oio.write.os, "replace", broken_replace)
    out = tmp_path / "o.onnxtxt"
    with pytest.raises(OutputError, match=f"cannot write '{out}': Permission denied"):
        oio.atomic_write_text(out, "text")
    assert os.listdir(tmp_path) == []


# -- model + external data: every state a kill can leave loads -------------------------------

_KILLER = """
import os, signal, sys
sys.path.insert(0, {here!r})
from test_io import make_model
import otoir
k = int(sys.argv[1])
calls = [0]
def counting(fn):
    def wrapper(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **kw)
    return wrapper
os.replace = counting(os.replace)
os.unlink = counting(os.unlink)
otoir.save(make_model(seed=int(sys.argv[3])), sys.argv[2], external_data=True, size_threshold_bytes=0)
print(calls[0])
"""


@pytest.mark.parametrize("generations", [1, 2])
def test_kill_at_any_step_leaves_a_loadable_model(tmp_path, generations):
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(here=here))
    old_out = run(make_model(seed=1), X)
    new_out = run(make_model(seed=2), X)
    k = 1
    while True:
        d = tmp_path / f"k{k}"
        d.mkdir()
        path = d / "m.onnx"
        for _ in range(generations):  # the old pair: m.onnx.data, or (2nd generation) a fresh name
            otoir.save(make_model(seed=1), path, external_data=True, size_threshold_bytes=0)
        proc = subprocess.run([sys.executable, str(script), str(k), str(path), "2"], capture_output=True, text=True, timeout=120)
        got = run(path, X)  # loads and runs, whatever the step
        if proc.returncode == -signal.SIGKILL:
            assert np.allclose(got, old_out, atol=1e-6) or np.allclose(got, new_out, atol=1e-6), k
        else:
            assert proc.returncode == 0, proc.stderr
            total = int(proc.stdout.split()[-1])
            np.testing.assert_allclose(got, new_out, rtol=1e-6, atol=1e-6)
            data = [n for n in os.listdir(d) if n.endswith(".data")]
            assert len(data) == 1  # the replaced model's data is gone
            assert k > total
            break
        k += 1
    assert k >= 3  # killed at least between data and model rename, and after it


def test_external_data_names_alternate_and_old_data_is_removed(tmp_path):
    path = tmp_path / "m.onnx"
    otoir.save(make_model(seed=1), path, external_data=True, size_threshold_bytes=0)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    otoir.save(make_model(seed=2), path, external_data=True, size_threshold_bytes=0)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and names[0] == "m.onnx" and names[1].startswith("m.onnx.") and names[1] != "m.onnx.data"
    np.testing.assert_allclose(run(path, X), run(make_model(seed=2), X), rtol=1e-6, atol=1e-6)
    otoir.save(make_model(seed=3), path, external_data=True, size_threshold_bytes=0)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    otoir.save(make_model(seed=4), path)  # inline now: the old data file goes too
    assert os.listdir(tmp_path) == ["m.onnx"]
    np.testing.assert_allclose(run(path, X), run(make_model(seed=4), X), rtol=1e-6, atol=1e-6)


def test_data_files_of_other_models_are_kept(tmp_path):
    path = tmp_path / "m.onnx"
    otoir.save(make_model(seed=1), path, external_data="shared.bin", size_threshold_bytes=0)
    (tmp_path / "m.onnx.data").write_bytes(b"someone else's")  # not referenced by m.onnx
    otoir.save(make_model(seed=2), path)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data", "shared.bin"]


def test_in_place_rewrite_of_an_external_data_model(tmp_path):
    path = tmp_path / "m.onnx"
    otoir.save(make_model(seed=1), path, external_data=True, size_threshold_bytes=0)
    code, _, err = cli(path, "-p", "cse", "-o", path, "--external-data", "-q")
    assert code == 0, err
    np.testing.assert_allclose(run(path, X), run(make_model(seed=1), X), rtol=1e-6, atol=1e-6)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".data")]) == 1


# -- external data resolved against the model file ------------------------------------------


@pytest.fixture
def ext_model(tmp_path):
    from otoir.zoo.random_dag import random_conv_dag

    d = tmp_path / "model dir"
    d.mkdir()
    path = d / "m.onnx"
    otoir.save(random_conv_dag(3, n_blocks=4), path, external_data=True, size_threshold_bytes=0)
    return path


def test_loaded_external_model_is_independent_of_cwd(ext_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(ext_model)
    model = otoir.load(rel)
    first = next(iter(model.graph.initializers))
    expected = model.graph.initializers[first].const_value.numpy().copy()
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # the model was given by a relative path: still readable
    np.testing.assert_array_equal(model.graph.initializers[first].const_value.numpy(), expected)
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))  # a copy through protobuf
    np.testing.assert_array_equal(copy.graph.initializers[first].const_value.numpy(), expected)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


@pytest.mark.parametrize("pipeline", ["zero-groups{random=0.5 seed=1}", "zero-groups{random=0.5 seed=1},eliminate-dead-branches,cleanup"])
def test_same_output_from_any_cwd(ext_model, tmp_path, monkeypatch, pipeline):
    outputs = []
    for i, cwd in enumerate([ext_model.parent, tmp_path]):
        monkeypatch.chdir(cwd)
        out = tmp_path / f"o{i}.onnx"
        code, _, err = cli(ext_model, "-p", pipeline, "--verify", "-o", out, "-q", "--pass-statistics")
        assert code == 0, err
        assert "(num-zeroed) 1" in err or "(num-zeroed) 2" in err or "(num-zeroed) 3" in err
        outputs.append((out.read_bytes(), err))
    assert outputs[0] == outputs[1]


def test_missing_external_data_is_an_input_error(ext_model, tmp_path):
    os.unlink(ext_model.parent / "m.onnx.data")
    with pytest.raises(InputError, match="m.onnx.data"):
        otoir.load(ext_model)
    code, _, err = cli(ext_model, "-p", "cse", "-o", tmp_path / "o.onnx")
    assert code == 2 and "cannot read external data" in one_line(err)
    assert not (tmp_path / "o.onnx").exists()


def test_short_external_data_is_an_input_error(ext_model):
    data = ext_model.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="too short"):
        otoir.load(ext_model)


def test_external_data_outside_the_model_directory_is_refused(tmp_path):
    proto = ir.to_proto(make_model())
    w = next(t for t in proto.graph.initializer if t.name == "w")
    (tmp_path / "secret.data").write_bytes(w.raw_data)
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.data"), ("offset", "0"), ("length", str(8 * 3 * 3 * 3 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "m.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(InputError, match="outside the model's directory"):
        otoir.load(sub / "m.onnx")


def test_inline_data_of_the_wrong_size_names_the_initializer(tmp_path):
    proto = ir.to_proto(make_model())
    w = next(t for t in proto.graph.initializer if t.name == "w")
    w.raw_data = w.raw_data[:-3]
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(InputError, match="initializer 'w' has 861 bytes of data"):
        otoir.load(path)
    code, _, err = cli(path, "-p", "cse")
    assert code == 2 and "initializer 'w'" in one_line(err) and "multiple of element size" not in err


@pytest.mark.parametrize("fail_at", [1, 2])
def test_failing_rename_keeps_the_old_pair(tmp_path, monkeypatch, fail_at):
    """os.replace raising at the data rename (1) or the model rename (2): the old pair loads, nothing new is left."""
    path = tmp_path / "m.onnx"
    otoir.save(make_model(seed=1), path, external_data=True, size_threshold_bytes=0)
    real_replace = os.replace
    calls = [0]

    def replace(a, b):
        calls[0] += 1
        if calls[0] == fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(a, b)

    monkeypatch.setattr(oio.write.os, "replace", replace)
    with pytest.raises(OutputError, match=f"cannot write '{path}': Input/output error"):
        otoir.save(make_model(seed=2), path, external_data=True, size_threshold_bytes=0)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_allclose(run(path, X), run(make_model(seed=1), X), rtol=1e-6, atol=1e-6)
