"""edgeml-bench: on a tiny model it prints the table (model | kernels | edgeml | onnxruntime 2 threads | ratio | host
time | host CPU), the ratio is edgeml's median over onnxruntime's, the runs alternate in blocks, and bad input is one
line."""
import pytest

import compiled
from edgeml.demo_model import build_small
from tools import bench


def test_bench_prints_the_table_for_a_tiny_model(tmp_path, capsys):
  model = tmp_path / "tiny_drive.onnx"
  build_small(str(model), 16, 32, hidden=8)
  bench.main([str(model), "--runs", "4", "--block", "2", "--no-tune"])
  out = capsys.readouterr().out.splitlines()
  head = next(i for i, line in enumerate(out) if line.startswith("model"))
  columns = [c.strip() for c in out[head].split("|")]
  assert columns[:5] == ["model", "kernels", "edgeml ms", "onnxruntime 2 threads ms", "ratio"]
  row = [c.strip() for c in out[head + 2].split("|")]
  assert row[0] == "tiny_drive" and row[4].endswith("x") and float(row[4][:-1]) > 0
  assert all(float(v) > 0 for i in (2, 3) for v in row[i].split(" / "))  # the ratio's arithmetic: the test below
  artifact = bench.compile_artifact(model, str(tmp_path), tune=False, fp16=False)
  assert int(row[1]) == len(compiled.load(artifact).kernels)
  assert all("ms =" in row[i] and row[i].endswith("%") for i in (5, 6))


def test_runs_alternate_in_blocks_after_a_warm_up():
  calls = []
  def runner(name, extra=None):
    def run():
      calls.append(name)
      return extra
    return run
  times = bench.alternate({"a": runner("a", {"device": 0.5}), "b": runner("b")}, runs=5, block=2, warmup=1)
  assert "".join(calls) == "ab" + "aabbaabbab"
  assert len(times["a"]) == len(times["b"]) == 5 and times["a_device"] == [0.5] * 5 and "b_device" not in times


def test_ratio_and_host_share_from_known_times():
  rows = {"m": {"kernels": 3, "edgeml": [0.004, 0.006, 0.005], "edgeml_device": [0.004, 0.004, 0.004],
                "edgeml_cpu": [0.0002, 0.0004, 0.0003], "ort": [0.002, 0.002, 0.003]}}
  lines = bench.table(rows, with_tinygrad=False)
  cells = [c.strip() for c in lines[2].split("|")]
  assert cells == ["m", "3", "5.00 / 5.80", "2.00 / 2.80", "2.50x", "1.00 ms = 25%", "0.30 ms = 8%"]
  rows["m"]["tinygrad"] = "cannot run: no GRU"
  lines = bench.table(rows, with_tinygrad=True)
  assert lines[2].split("|")[-1].strip() == "(1)" and lines[-1] == "(1) cannot run: no GRU"


def test_a_missing_model_is_one_line(tmp_path):
  with pytest.raises(SystemExit, match=f"^edgeml-bench: no such model file: {tmp_path / 'none.onnx'}$"):
    bench.main([str(tmp_path / "none.onnx")])
  bad = tmp_path / "bad.onnx"
  bad.write_bytes(b"not a model")
  with pytest.raises(SystemExit, match=f"^edgeml-bench: edgeml-compile {bad} failed: "):
    bench.main([str(bad), "--no-tune"])
