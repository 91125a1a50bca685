"""The metrics table: append-only, deduplicated across writers, whole lines
only."""
import json

from icl_transience import metrics_table


def rows(step, members=("a", "b")):
  return [dict(member=m, step=step, sequences=step * 8, evaluator="icl",
               metric="acc", value=0.5 + step / 100) for m in members]


def test_writers_append_only_new_rows_once(tmp_path):
  workdir = str(tmp_path)
  first, second = metrics_table.MetricsTable(workdir), metrics_table.MetricsTable(workdir)
  assert first.append(rows(0)) == 2
  # the second writer takes in the first's rows before appending its own
  assert second.append(rows(0) + rows(1)) == 2
  assert first.append(rows(1) + rows(2)) == 2
  on_disk = metrics_table.read(workdir)
  assert on_disk == rows(0) + rows(1) + rows(2)
  assert first.has("a", 1, "icl") and not first.has("a", 3, "icl")
  text = open(metrics_table.path(workdir)).read()
  assert text == "".join(json.dumps(r) + "\n" for r in on_disk)


def test_a_partial_line_is_ignored_then_cut(tmp_path):
  workdir = str(tmp_path)
  metrics_table.MetricsTable(workdir).append(rows(0))
  with open(metrics_table.path(workdir), "a") as f:
    f.write('{"member": "a", "step": 1, "seq')  # a crash in mid-append
  assert metrics_table.read(workdir) == rows(0)
  table = metrics_table.MetricsTable(workdir)
  assert table.rows == rows(0)
  assert table.append(rows(1)) == 2
  assert open(metrics_table.path(workdir)).read() == "".join(
      json.dumps(r) + "\n" for r in rows(0) + rows(1))


def test_a_replaced_file_is_read_again(tmp_path):
  workdir = str(tmp_path)
  table = metrics_table.MetricsTable(workdir)
  table.append(rows(0))
  # another tool rewrites the table (atomically): the writer re-reads it
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in rows(0) + rows(5)))
  assert table.append(rows(5) + rows(6)) == 2
  assert metrics_table.read(workdir) == rows(0) + rows(5) + rows(6)


def test_a_table_cut_in_place_is_read_again(tmp_path):
  workdir = str(tmp_path)
  table = metrics_table.MetricsTable(workdir)
  table.append(rows(0) + rows(1))
  open(metrics_table.path(workdir), "w").close()  # same file, now empty
  assert table.append(rows(2)) == 2
  assert open(metrics_table.path(workdir)).read() == "".join(
      json.dumps(r) + "\n" for r in rows(2))
