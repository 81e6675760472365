"""What the frozen LLM does with a perfect or a noisy token readout in the speech slot (no training).

    python -m analysis.readout_ceiling [--llm pack:smollm2-135m-instruct] [--n 100] [--rates 0,0.1,0.3,0.5]

CTC compression (``adapter.ctc.compress``) gives the LLM about one vector per token, a noisy reading of
the transcript. This measures the ceiling of that path with the projector taken out: the speech slot
holds the LLM's own embeddings of the transcript's tokens, corrupted at a token error rate ``p``
(each token is, with probability ``p``, deleted, replaced by or followed by a token drawn from the text
set's own tokens, in the shares given by ``--shares``), and the frozen LLM, prompted as in training,
is scored teacher-forced (accuracy on the transcript's tokens, what the emergence detector reads) and
by greedy decoding (WER). The row ``prompt only`` leaves the slot empty: the accuracy the LLM reaches
from its language prior alone, the floor that a projector carrying no information sits on.

One seed of corruption (``--seed``); the text set is read from a LibriSpeech-style TSV
(``../shared/data/texts``), lowercased as ``llm.casing`` says.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import torch

from harness.config import build_config
from harness.metrics import word_errors
from harness.models.build import build_model

DEFAULT_TEXTS = Path("../shared/data/texts/librispeech-dev-clean-2.tsv")


def read_texts(path: Path, n: int) -> list[str]:
    """The first ``n`` transcripts of a TSV with a ``text`` column (or, without one, the last column)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: empty")
    col = rows[0].index("text") if "text" in rows[0] else len(rows[0]) - 1
    return [r[col] for r in rows[1: n + 1] if len(r) > col and r[col].strip()]


def corrupt(ids: list[int], p: float, shares: tuple[float, float, float], pool: list[int], rng: random.Random) -> tuple[list[int], int]:
    """``ids`` with each token deleted / substituted / followed by an insertion with probabilities
    ``p * shares``; returns the corrupted ids and the number of edits made."""
    d, s, i = (p * x for x in shares)
    out, edits = [], 0
    for t in ids:
        u = rng.random()
        if u < d:
            edits += 1
            continue
        if u < d + s:
            out.append(rng.choice(pool))
            edits += 1
        else:
            out.append(t)
        if rng.random() < i:
            out.append(rng.choice(pool))
            edits += 1
    return out, edits


@torch.no_grad()
def score(model, texts: list[str], slots: list[list[int]] | None, batch: int = 16) -> dict[str, float]:
    """Teacher-forced accuracy and greedy WER with ``slots`` (token ids per text, or None: an empty slot)."""
    embed = model.llm.get_input_embeddings()
    correct = tokens = 0
    hyps: list[str] = []
    for lo in range(0, len(texts), batch):
        chunk = texts[lo: lo + batch]
        rows = [slots[lo + j] if slots is not None else [] for j in range(len(chunk))]
        S = max(1, max(len(r) for r in rows))
        H = embed.weight.shape[1]
        speech = embed.weight.new_zeros(len(chunk), S, H)  # B, S, H: the slot, right-padded
        for j, r in enumerate(rows):
            if r:
                speech[j, : len(r)] = embed(torch.tensor(r, dtype=torch.long))
        lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
        targets = [model.prompt.target_ids(t) for t in chunk]
        out = model.lm_loss(model.build_inputs(speech, lens, targets, left_pad=False, shared_prefix=model.shares_prefix))
        correct += int(out["correct"])
        tokens += int(out["tokens"])
        hyps += model.generate_embeddings(speech, lens, [2 * len(t) + 10 for t in targets])
    refs = [model.prompt.cased(t) for t in texts]
    wer, _ = word_errors(refs, hyps)
    return {"acc": correct / max(tokens, 1), "wer": wer.wer, "ins": wer.insertions,
            "errors": wer.substitutions + wer.deletions + wer.insertions, "hyp0": hyps[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.readout_ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--llm", default="pack:smollm2-135m-instruct")
    ap.add_argument("--encoder", default="pack:whisper-tiny.en", help="built only to complete the model; never run")
    ap.add_argument("--prompt-style", default="chat", choices=["chat", "plain"])
    ap.add_argument("--prompt", default=None, help="the instruction after the speech (default: the config's)")
    ap.add_argument("--texts", type=Path, default=DEFAULT_TEXTS)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rates", default="0,0.1,0.3,0.5")
    ap.add_argument("--shares", default="0.6,0.3,0.1", help="deletion, substitution, insertion shares of the errors")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        rates = [float(x) for x in a.rates.split(",")]
        shares = tuple(float(x) for x in a.shares.split(","))
        if len(shares) != 3 or abs(sum(shares) - 1) > 1e-6 or any(not 0 <= r <= 1 for r in rates):
            raise ValueError("--shares must be three numbers summing to 1 and --rates numbers in [0, 1]")
        texts = read_texts(a.texts, a.n)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    llm = {"name": a.llm, "prompt_style": a.prompt_style, "casing": "lower"}
    if a.prompt is not None:
        llm["prompt"] = a.prompt
    model = build_model(build_config({"encoder": {"name": a.encoder}, "llm": llm})).eval()
    ids = [model.prompt.target_ids(t)[:-1] for t in texts]  # the transcript's tokens, no EOS
    pool = [t for r in ids for t in r]
    rng = random.Random(a.seed)
    print(f"{len(texts)} transcripts of {a.texts.name}, LLM {a.llm} ({a.prompt_style} prompt), frozen, no training\n")
    print("| speech slot holds | token edits / tokens | slot read as text: WER | teacher-forced acc | LLM greedy WER | insertions / errors | first transcript |")
    print("|---|---|---|---|---|---|---|")
    r = score(model, texts, None)
    print(f"| prompt only (empty slot) | - | - | {r['acc']:.3f} | {100 * r['wer']:.1f} % | {r['ins']} / {r['errors']} | {r['hyp0'][:50]!r} |")
    for p in rates:
        noisy, edits = zip(*(corrupt(r_, p, shares, pool, rng) for r_ in ids))
        read = [model.prompt.tokenizer.decode(x, skip_special_tokens=True).strip() for x in noisy]
        slot_wer, _ = word_errors([model.prompt.cased(t) for t in texts], read)
        r = score(model, texts, list(noisy))
        print(f"| transcript tokens, error rate {p:.2f} | {sum(edits) / len(pool):.3f} | {100 * slot_wer.wer:.1f} % "
              f"| {r['acc']:.3f} | {100 * r['wer']:.1f} % | {r['ins']} / {r['errors']} | {r['hyp0'][:50]!r} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
