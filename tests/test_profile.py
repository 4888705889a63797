"""The artifact tools on a compiled drive model. edgeml-profile: the table lists every kernel once with its % of
roofline (checked on known counts), host time is wall minus device time, and the trace is valid Chrome JSON with one
slice per kernel per run. edgeml-validate passes the artifact against onnxruntime. A bad file or a mismatched model is
one line naming it (inspect, profile, validate), not a traceback."""
import json
from collections import Counter

import pytest

import compiled
from compiled import roofline
from edgeml.demo_model import build_small
from tools import profile_artifact as profile
from edgeml.compile import compile_model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
  folder = tmp_path_factory.mktemp("profile")
  build_small(str(folder / "drive.onnx"), 16, 32, hidden=8)
  compile_model(str(folder / "drive.onnx"), str(folder / "drive.edgeml"), log=lambda *_: None)
  return str(folder / "drive.edgeml")


def test_table_and_trace(artifact, tmp_path, capsys):
  runs, trace = 7, tmp_path / "trace.json"
  profile.main([artifact, "-n", str(runs), "--trace", str(trace)])
  printed = capsys.readouterr().out
  kernels = [k.name for k in compiled.load(artifact).kernels]
  rows = [line.split()[0] for line in printed.splitlines() if line.split() and line.split()[0] in kernels]
  assert sorted(rows) == sorted(kernels)
  assert "end to end" in printed and "p99" in printed and "host time:" in printed
  assert printed.count("<- worst") == 1 and "roofline: peak" in printed
  events = json.loads(trace.read_text())["traceEvents"]
  slices = [e for e in events if e["ph"] == "X"]
  assert Counter(e["name"] for e in slices) == Counter({name: runs for name in kernels})
  assert all({"ts", "dur", "pid", "tid", "args"} <= e.keys() and e["dur"] >= 0 for e in slices)
  assert sorted(e["args"]["run"] for e in slices) == sorted(list(range(runs)) * len(kernels))


def test_rows_sorted_by_time_with_shares():
  class K:  # the fields kernel_rows reads
    def __init__(self, name, flops):
      self.name, self.global_size, self.local_size, self.flops, self.bytes = name, (4,), None, flops, 8

  class P: kernels = [K("a", 10), K("b", 20)]
  rows = profile.kernel_rows(P, [[1e-6, 3e-6], [1e-6, 3e-6]])
  assert [r["name"] for r in rows] == ["b", "a"] and [r["share"] for r in rows] == pytest.approx([0.75, 0.25])
  assert rows[0]["gflops"] == pytest.approx(20 / 3e-6 / 1e9)
  lines = profile.format_rows(rows, top=1)
  assert lines[1].startswith("b") and "1 more" in lines[2]


def test_roofline_column_from_known_counts():
  class K:
    def __init__(self, name, flops, nbytes):
      self.name, self.global_size, self.local_size, self.flops, self.bytes = name, (4,), None, flops, nbytes

  # peaks 100 GFLOP/s and 10 GB/s: "mem" is bound by 1 MB (100 us), "alu" by 20 MFLOP (200 us), "idle" does nothing
  class P: kernels = [K("mem", 1e3, 1e6), K("alu", 2e7, 1e3), K("idle", 0, 0)]
  peaks = roofline.Peaks(100e9, 10e9)
  rows = {r["name"]: r for r in profile.kernel_rows(P, [[400e-6, 250e-6, 50e-6]] * 3, peaks)}
  assert rows["mem"]["bound"] == pytest.approx(100e-6) and rows["alu"]["bound"] == pytest.approx(200e-6)
  assert rows["mem"]["roof"] == pytest.approx(0.25) and rows["alu"]["roof"] == pytest.approx(0.8)
  assert rows["idle"]["roof"] == 0 and rows["mem"]["lost"] == pytest.approx(300e-6)
  assert [r["worst"] for r in rows.values()] == [True, False, False]  # the most time lost, not the lowest percentage
  by_roof = profile.kernel_rows(P, [[400e-6, 250e-6, 50e-6]], peaks, by="roofline")
  assert [r["name"] for r in by_roof] == ["idle", "mem", "alu"]
  assert [r["limit"] for r in by_roof] == ["flop", "mem", "flop"]  # no work at all counts as compute-bound
  lines = profile.format_rows(by_roof)
  assert lines[0].split()[-2:] == ["roof", "limit"] and lines[2].split()[-4:] == ["25.0%", "mem", "<-", "worst"]
  assert lines[3].split()[-2:] == ["80.0%", "flop"]
  summary = profile.roofline_summary(peaks, by_roof)
  assert "100.0 GFLOP/s, 10.0 GB/s" in summary[0] and "mem at 25.0% of roofline" in summary[1]


def test_host_time_is_wall_minus_device_time():
  line = profile.host_time([3e-3, 5e-3, 4e-3], [[1e-3, 1e-3], [2e-3, 2e-3], [1.5e-3, 1.5e-3]])
  assert line.startswith("host time: 1.000 ms") and "device 3.000 ms" in line and "33.3%" in line


def test_validate_passes_the_artifact_of_its_model(artifact, capsys):
  from tools import validate
  with pytest.raises(SystemExit) as done: validate.main([artifact.replace(".edgeml", ".onnx"), artifact])
  assert done.value.code == 0, capsys.readouterr().out
  assert "2 passed, 0 failed" in capsys.readouterr().out


def test_tools_name_a_bad_input_instead_of_a_traceback(artifact, tmp_path):
  from onnx import TensorProto, helper, save
  from tools import inspect_artifact as inspect, validate
  bad = tmp_path / "bad.edgeml"
  bad.write_bytes(b"garbage")
  model = artifact.replace(".edgeml", ".onnx")
  for name, run in (("inspect", lambda: inspect.main([str(bad)])), ("profile", lambda: profile.main([str(bad)])),
                    ("validate", lambda: validate.main([model, str(bad)]))):
    with pytest.raises(SystemExit, match=f"^edgeml-{name}: {bad}: truncated"): run()
  with pytest.raises(SystemExit, match=f"^edgeml-validate: no such model file: {tmp_path / 'none.onnx'}"):
    validate.main([str(tmp_path / "none.onnx"), artifact])
  value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8])
  other = helper.make_model(helper.make_graph([helper.make_node("Relu", ["desire"], ["y"])], "other", [value("desire")],
                                              [value("y")]), ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
  save(other, str(tmp_path / "other.onnx"))
  with pytest.raises(SystemExit, match=r"has outputs \['plan', 'state_out'\] that .*other.onnx lacks"):
    validate.main([str(tmp_path / "other.onnx"), artifact])
