"""The published numbers as data: internal consistency, lookups, and the paper's own study files."""
import doctest
from pathlib import Path

import pytest

from analysis import labels, paper, tables
from harness.config import flatten
from harness.experiments.study import load_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"


@pytest.mark.parametrize("row", paper.TABLE4, ids=lambda r: r.name)
def test_projector_formula_reproduces_table4(row):
    n = paper.projector_params(d_enc=1280, d_llm=row.hidden)  # Whisper-large-v2 encoder
    assert round(n / 1e6, 2) == pytest.approx(row.projector_params / 1e6)


@pytest.mark.parametrize("row", paper.TABLE5, ids=lambda r: r.name)
def test_projector_formula_reproduces_table5(row):
    k = 10 if row.name == "FBank" else 5  # 100 Hz filterbanks need k = 10 for the same 10 Hz
    n = paper.projector_params(d_enc=row.hidden, d_llm=4096, k=k)  # Vicuna-7B
    assert round(n / 1e6, 2) == pytest.approx(row.projector_params / 1e6)


def test_tables_agree_where_they_overlap():
    pair = lambda w: (w.clean, w.other)  # noqa: E731 - the source differs, the numbers must not
    for row in paper.TABLE4:
        if row.name in paper.TABLE2_LLMS:
            assert pair(paper.TABLE2[("Whisper large", row.name)]) == pair(row.wer)
    for row in paper.TABLE3:
        t4 = paper.table4_row(row.llm)
        assert pair(row.wer) == pair(t4.wer)
    assert pair(paper.table4_row("Vicuna-7B-v1.5").wer) == pair(paper.table5_row("Whisper large").wer)
    assert len(paper.TABLE2) == 20 and len(paper.TABLE5) == 13 and len(paper.TABLE6) == 7 and len(paper.TABLE9) == 4


def test_lookups():
    expected = paper.PaperWER(12.72, 21.64, "Table 2")
    assert paper.published_wer("hf:openai/whisper-tiny", "hf:TinyLlama/TinyLlama_v1.1") == expected
    assert paper.published_wer("hf:openai/whisper-large-v2", "hf:microsoft/phi-2").source == "Table 4"
    assert paper.published_wer("hf:microsoft/wavlm-large", "hf:lmsys/vicuna-7b-v1.5").clean == 2.13
    assert paper.published_wer("facebook/hubert-xlarge-ls960-ft", "lmsys/vicuna-7b-v1.5") == paper.BEST_SYSTEM
    assert paper.published_wer("HF:OpenAI/Whisper-Base", "hf:lmsys/vicuna-7b-v1.5").other == 13.07
    # Not the paper's checkpoints, or a pair it never trained: no number.
    assert paper.published_wer("pack:whisper-tiny.en", "hf:lmsys/vicuna-7b-v1.5") is None
    assert paper.published_wer("hf:openai/whisper-tiny", "hf:microsoft/phi-2") is None
    assert paper.published_wer("tiny:whisper", "tiny:llama") is None
    assert paper.PaperWER(1.0, 2.0, "x").for_split("test-other") == 2.0
    assert paper.PaperWER(1.0, 2.0, "x").for_split("dev-other") is None
    assert paper.display_name("hf:facebook/hubert-large-ls960-ft") == "HuBERT Large + LibriSpeech-960 fine-tuning"
    assert paper.display_name("pack:smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert paper.hidden_size("hf:microsoft/phi-2") == 2560 and paper.hidden_size("hf:openai/whisper-small") == 768
    assert paper.hidden_size("pack:whisper-base") is None


def test_recipe():
    assert paper.follows_recipe({"adapter.k": 5, "adapter.projector": "linear"})
    assert not paper.follows_recipe({"adapter.k": 10})
    assert not paper.follows_recipe({"encoder.trainable": True})
    assert not paper.follows_recipe({"adapter.projector": "qformer"})


@pytest.mark.parametrize(
    "name", ["paper_table2_encoder_x_llm", "paper_table4_llms", "paper_table5_encoders", "paper_emergence"]
)
def test_every_cell_of_the_paper_studies_has_a_published_number(name):
    study = load_study(STUDIES / f"{name}.yaml")
    for cell in study.cells:
        cfg = flatten(cell.config)
        assert paper.follows_recipe(cfg), cell.name
        in_a_table = cfg["encoder.name"] == "hf:openai/whisper-large-v2" or cfg["llm.name"] == "hf:lmsys/vicuna-7b-v1.5"
        if name == "paper_emergence" and not in_a_table:
            continue  # Figs. 1-2 pairs that no table prints
        assert paper.published_wer(cfg["encoder.name"], cfg["llm.name"]) is not None, cell.name


@pytest.mark.parametrize("number", [2, 3, 4, 5, 6, 8, 9])
def test_paper_tables_render(number, tmp_path):
    t = tables.paper_table(number)
    md = t.to_markdown()
    assert md.startswith(f"**Paper Table {number} (published)**") and md.count("\n|") >= 3
    assert "\\begin{tabular}" in t.to_latex() and "<table" in t.to_html()
    assert all(p.stat().st_size > 0 for p in t.save(tmp_path).values())
    if number == 2:
        assert t.display.loc["Whisper tiny", "TinyLLaMA"] == "12.72 / 21.64"
        assert t.display.loc["Whisper small", "TinyLLaMA-Chat"] == "5.94 / 11.50"
    if number == 5:
        assert t.display.loc["FBank", "params"] == "—"
        assert t.display.loc["Whisper large", "projector params"] == "21.50M"


def test_paper_table_unknown():
    with pytest.raises(ValueError, match="2, 3, 4, 5, 6, 8 and 9"):
        tables.paper_table(7)


def test_formatting():
    assert tables.fmt_count(17_305_600) == "17.31M" and tables.fmt_count(1.1e9) == "1.10B"
    assert tables.fmt_count(640) == "640"
    assert tables.fmt_wer(0.0301, 0.028, 0.032) == "3.01 [2.80, 3.20]" and tables.fmt_wer(float("nan")) == "—"
    assert tables.fmt_value(10.0) == "10" and tables.fmt_value(0.123456) == "0.1235" and tables.fmt_value(True) == "yes"
    assert labels.axis_label("encoder.name", "hf:openai/whisper-medium") == "Whisper medium"
    assert labels.axis_label("encoder.trainable", False) == "frozen"
    assert tables.model_width("tiny:whisper", kind="encoder") == 32
    assert tables.model_width("tiny:llama", kind="llm") == 64
    assert tables.model_width("hf:no-such-org/no-such-model", kind="llm") is None


@pytest.mark.parametrize("module", ["paper", "bootstrap", "data", "tables", "figures", "report"])
def test_docstring_examples_run(module):
    import importlib

    mod = importlib.import_module(f"analysis.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
