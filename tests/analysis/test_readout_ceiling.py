"""The readout-ceiling diagnostic: its corruption model (known answers) and a run on tiny real models."""
from __future__ import annotations

import random

from analysis import readout_ceiling as rc


def test_corrupt_known_answers():
    ids, pool = list(range(10, 30)), [1, 2, 3]
    rng = random.Random(0)
    assert rc.corrupt(ids, 0.0, (0.6, 0.3, 0.1), pool, rng) == (ids, 0)
    assert rc.corrupt(ids, 1.0, (1.0, 0.0, 0.0), pool, rng) == ([], 20)  # every token deleted
    subbed, n = rc.corrupt(ids, 1.0, (0.0, 1.0, 0.0), pool, rng)
    assert n == 20 and len(subbed) == 20 and set(subbed) <= set(pool)
    grown, n = rc.corrupt(ids, 1.0, (0.0, 0.0, 1.0), pool, rng)
    assert n == 20 and len(grown) == 40 and grown[::2] == ids  # each token followed by one insertion
    # a rate of 0.5 makes about half as many edits as tokens over many draws
    many = list(range(2000))
    _, n = rc.corrupt(many, 0.5, (0.6, 0.3, 0.1), pool, random.Random(1))
    assert 900 < n < 1100


def test_runs_on_tiny_models(tmp_path, capsys):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("id\tduration\tspeaker\tgender\ttext\n"
                   "a\t1\t1\tF\tTHE CAT SAT ON THE MAT\n"
                   "b\t1\t1\tM\tA DOG RAN HOME\n"
                   "c\t1\t1\tF\tNOTHING AT ALL\n")
    rc_ = rc.main(["--encoder", "tiny:whisper", "--llm", "tiny:llama", "--prompt-style", "plain",
                   "--texts", str(tsv), "--n", "3", "--rates", "0,1"])
    out = capsys.readouterr().out
    assert rc_ == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]  # after the header
    assert len(rows) == 3 and rows[0].startswith("| prompt only")
    assert "error rate 0.00 | 0.000 | 0.0 %" in rows[1]  # the clean slot reads back as the transcript itself
    assert "error rate 1.00 | 1." in rows[2] or "error rate 1.00 | 0.9" in rows[2]


def test_bad_input_is_one_line(tmp_path, capsys):
    assert rc.main(["--texts", str(tmp_path / "missing.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tsv" in err[0]
    assert rc.main(["--texts", str(tmp_path / "missing.tsv"), "--shares", "1,1,1"]) == 2
    assert "--shares" in capsys.readouterr().err
