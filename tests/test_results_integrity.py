"""Results store integrity: damaged parts are named and skipped, duplicate rows read once, seeds counted once."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eclipse_ray import result_store as store
from eclipse_ray.results.pareto import summarize
from eclipse_ray.result_store import CorruptPart, append_rows, read_part, read_results, verify_results
from eclipse_ray.results.table import cell_stats, defense_table

MARK = 0.123456789  # a test_acc no other row has: its 8 bytes lie in a page of the part that holds it


def row(h: str, seed: int = 0, acc: float = 0.5, **extra) -> dict:
    return {"dataset": "d", "attack.name": "lsp", "defense.name": "jpeg", "seed": seed, "test_acc": acc,
            "poison_success": 0.3, "config_hash": h, **extra}


def three_parts(tmp_path: Path) -> tuple[Path, Path]:
    """A store of three one-row parts; returns it and the part holding ``MARK``."""
    append_rows(tmp_path, [row("a")], name="a")
    marked = append_rows(tmp_path, [row("b", acc=MARK)], name="b")
    append_rows(tmp_path, [row("c")], name="c")
    return tmp_path, Path(marked)


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def footer_start(data: bytes) -> int:
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("eclipse_ray: warning: ")]


def test_flipped_byte_in_a_page_is_named_and_the_part_skipped(tmp_path, capsys):
    study, part = three_parts(tmp_path)
    data = part.read_bytes()
    pos = data.find(struct.pack("<d", MARK))
    col = pq.ParquetFile(part).metadata.row_group(0).column(list(pq.read_schema(part).names).index("test_acc"))
    start = col.dictionary_page_offset or col.data_page_offset
    assert start <= pos < start + col.total_compressed_size < footer_start(data)  # inside a page, not the footer
    flip(part, pos)
    assert pq.read_table(part)["test_acc"][0].as_py() != MARK  # unverified, the damage reads as a wrong number
    df = read_results(study)
    assert sorted(df["config_hash"]) == ["a", "c"]
    (line,) = warnings(capsys.readouterr().err)
    assert "part-b.parquet" in line and "CRC" in line
    with pytest.raises(CorruptPart, match="part-b.parquet"):
        read_part(part)


def test_last_byte_of_every_column_chunk_is_caught(tmp_path):
    _, part = three_parts(tmp_path)
    good = part.read_bytes()
    md = pq.ParquetFile(part).metadata.row_group(0)
    for i in range(md.num_columns):
        col = md.column(i)
        part.write_bytes(good)
        flip(part, (col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size - 1)
        with pytest.raises(CorruptPart):
            read_part(part)


def test_renamed_column_in_the_footer_is_caught_by_the_digest(tmp_path, capsys):
    study, part = three_parts(tmp_path)
    data = bytearray(part.read_bytes())
    i = data.find(b"test_acc", footer_start(bytes(data)))
    data[i + 5] = ord("b")  # test_acc -> test_bcc: no page checksum covers the schema
    part.write_bytes(bytes(data))
    assert "test_bcc" in pq.read_table(part).column_names  # plain parquet reads it happily
    assert sorted(read_results(study)["config_hash"]) == ["a", "c"]
    assert "footer" in warnings(capsys.readouterr().err)[0]


@pytest.mark.parametrize("damage", ["truncated", "empty", "not parquet"])
def test_truncated_or_empty_part_is_skipped_with_one_warning(tmp_path, capsys, damage):
    study, part = three_parts(tmp_path)
    data = part.read_bytes()
    part.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not parquet": b"hello"}[damage])
    assert sorted(read_results(study)["config_hash"]) == ["a", "c"]
    (line,) = warnings(capsys.readouterr().err)
    assert "part-b.parquet" in line and "\n" not in line


def test_storage_error_is_raised_not_skipped(tmp_path, monkeypatch):
    study, part = three_parts(tmp_path)
    real = store.storage.read_bytes

    def denied(loc):
        if str(loc).endswith("part-b.parquet"):
            raise PermissionError(13, "Permission denied", str(loc))
        return real(loc)

    monkeypatch.setattr(store.storage, "read_bytes", denied)
    with pytest.raises(PermissionError):
        read_results(study)
    with pytest.raises(PermissionError):
        verify_results(study)


def test_parts_carry_page_checksums_and_stay_readable_by_plain_tools(tmp_path):
    _, part = three_parts(tmp_path)
    assert (pq.read_schema(part).metadata or {}).get(store.DIGEST_KEY)
    assert pq.read_table(part, page_checksum_verification=True)["test_acc"][0].as_py() == MARK
    assert len(pd.read_parquet(tmp_path)) == 3
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/part-*.parquet')").fetchall()[0][0] == 3


def test_legacy_part_without_checksums_is_still_read(tmp_path, capsys):
    pq.write_table(pa.table({"config_hash": ["old"], "seed": [0], "test_acc": [0.4]}), tmp_path / "part-old.parquet")
    append_rows(tmp_path, [row("new")], name="new")
    assert sorted(read_results(tmp_path)["config_hash"]) == ["new", "old"]
    assert capsys.readouterr().err == "" and verify_results(tmp_path) == []


def test_duplicate_rows_warn_once_and_the_newest_is_kept(tmp_path, capsys):
    """A legacy store: rows appended under random part names, one trial stored twice (and an older copy later)."""
    append_rows(tmp_path, [row("h", acc=0.9, timestamp="2024-05-02T10:00:00+0000")], name="1")
    append_rows(tmp_path, [row("h", acc=0.1, timestamp="2024-05-01T10:00:00+0000"), row("k")], name="2")
    append_rows(tmp_path, [row("h", seed=1, acc=0.2)], name="3")  # another seed: not a duplicate
    df = read_results(tmp_path)
    assert len(df) == 3 and df.set_index(["config_hash", "seed"]).loc[("h", 0), "test_acc"] == 0.9
    (line,) = warnings(capsys.readouterr().err)
    assert "1 duplicate" in line and "part-1.parquet" in line and "part-2.parquet" in line
    assert "part-3.parquet" not in line
    raw = read_results(tmp_path, dedupe=False)
    assert len(raw) == 4 and len(warnings(capsys.readouterr().err)) == 1


def test_without_a_time_column_the_last_part_wins(tmp_path, capsys):
    append_rows(tmp_path, [row("h", acc=0.1)], name="x1")
    append_rows(tmp_path, [row("h", acc=0.2), row("h", acc=0.3)], name="x2")  # twice in one part too
    df = read_results(tmp_path)
    assert df["test_acc"].tolist() == [0.3]
    assert "2 duplicate" in capsys.readouterr().err


def test_summaries_count_distinct_seeds(tmp_path, capsys):
    """The same row stored twice is one seed: n 1 and no std, not n 2 with std 0."""
    append_rows(tmp_path, [row("h", acc=0.5)], name="h")
    Path(tmp_path, "part-copy.parquet").write_bytes(Path(tmp_path, "part-h.parquet").read_bytes())
    raw = read_results(tmp_path, dedupe=False)
    assert len(raw) == 2
    for df in (raw, read_results(tmp_path)):
        s = summarize(df).iloc[0]
        assert s["seeds"] == 1 and np.isnan(s["test_acc_std"]) and s["test_acc_mean"] == 0.5
        c = cell_stats(df, "test_acc").loc[("lsp", "jpeg")]
        assert c["n"] == 1 and np.isnan(c["std"])
        assert defense_table(df, ["lsp"], ["jpeg"]).loc["lsp", "jpeg"] == "50.0"  # no "± 0.0"
    two = pd.DataFrame([row("h", acc=0.5), row("h", acc=0.5), row("g", seed=1, acc=0.7)])
    s = summarize(two).iloc[0]
    assert s["seeds"] == 2 and s["test_acc_mean"] == pytest.approx(0.6)  # a copy does not weigh its seed twice
    assert s["test_acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_verify_results_lists_each_problem(tmp_path, capsys):
    study, part = three_parts(tmp_path)
    assert verify_results(study) == []
    part.write_bytes(part.read_bytes()[:-10])
    append_rows(study, [row("a")], name="copy-of-a")
    problems = verify_results(study)
    assert capsys.readouterr().err == ""  # a doctor reports; it does not print
    assert {p["kind"] for p in problems} == {"corrupt-part", "duplicate-row"} and len(problems) == 2
    by = {p["kind"]: p for p in problems}
    assert by["corrupt-part"]["location"] == str(part)
    assert by["duplicate-row"]["location"].endswith("part-a.parquet")  # same time: the later part is kept
    assert "part-copy-of-a.parquet" in by["duplicate-row"]["detail"]
    assert all(set(p) == {"kind", "location", "detail"} and "\n" not in p["detail"] for p in problems)
    assert verify_results(tmp_path / "nowhere") == []
