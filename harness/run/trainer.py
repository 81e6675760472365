"""One training run: ``setup -> train -> cleanup``.

The runner is deliberately thin. Each ``_setup_x`` returns one object; :meth:`Trainer.train` is the
loop (gradient accumulation, clipping, per-step metrics, periodic evaluation, checkpoints, early
stopping); :meth:`Trainer.finish` decodes the test splits and saves the trained weights.

A checkpoint (:mod:`harness.run.checkpoint`) holds the trainable weights plus optimizer, scheduler, RNG
state and the position in the data order, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from harness.run import checkpoint, distributed
from harness.run.checkpoint import CheckpointError
from harness.config import RunConfig, config_hash, execution_dict, flatten, legacy_hashes, manifest_digest, to_yaml
from harness.data.batching import batches_by_count, batches_by_duration, batches_shortest_first
from harness.data.manifest import Utterance, check_audio_files, read_manifest
from harness.run.emergence import find_emergence, plot_curve
from harness.run.decode import ctc_transcribe, evaluate_split, speech_frames, teacher_forced, transcribe
from harness.run.features import FeatureCache
from harness.run.memory import keep_freed_memory
from harness.metrics import word_errors
from harness.models import SpeechLLM, build_model
from harness.run.distributed import local_device
from harness.tracking.trackers import DatasetRecord, LocalTracker, Tracker

log = logging.getLogger("harness.train")


class _GracefulStop:
    """SIGINT/SIGTERM/SIGUSR2 during training set a flag that the loop checks between steps: the current
    step finishes and is logged, a checkpoint is written, then the run stops. (An asynchronous
    KeyboardInterrupt could land between an optimizer step and its bookkeeping.) A second signal
    stops at once; a repeat within :attr:`SAME_STOP` seconds is the same stop delivered twice (a rank of
    a multi-process cell hears SLURM's signal, which reaches every process of a task, and the one its
    launcher forwards). SIGUSR2 is the warning SLURM sends before a time limit or a preemption
    (submitit's ``--signal=USR2@90``): the SLURM launcher requeues the task after such a stop."""

    SAME_STOP = 2.0

    def __init__(self) -> None:
        from harness import interrupts

        self.requested = interrupts.requested() is not None  # a stop that arrived before training and was lost
        self._first = 0.0 if self.requested else None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        import time

        from harness import interrupts

        now = time.monotonic()
        if self.requested:
            if self._first is not None and now - self._first < self.SAME_STOP:
                return
            raise KeyboardInterrupt(f"signal {signum} (second)")
        interrupts.record(signum)
        self.requested, self._first = True, now
        log.warning("signal %d: stopping after this step (checkpoint first); send it again to stop at once", signum)

    def __enter__(self) -> "_GracefulStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        from harness import interrupts

        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self.requested:
            interrupts.clear()  # honoured: this run stopped for it; a later run in this process starts clean


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at step {step}; stopping (lower train.lr or enable train.clip)")
        self.step = step


@dataclass
class Datasets:
    train: list[Utterance]
    dev: list[Utterance]
    tests: dict[str, list[Utterance]]


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # next batch of this epoch's order
    best_dev_loss: float = math.inf
    evals_without_improvement: int = 0
    audio_seconds: float = 0.0
    train_seconds: float = 0.0
    stopped_early: bool = False
    acc_history: list[float] = field(default_factory=list)  # train/acc of every step, for emergence


@dataclass
class RunResult:
    out_dir: Path
    config_hash: str
    state: TrainState
    metrics: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    return local_device(name)


class _NullTracker:
    """What ranks other than 0 log: nothing."""

    def log_params(self, params): ...
    def set_tags(self, tags): ...
    def log_metrics(self, metrics, step): ...
    def flush(self): ...
    def pending(self): return []
    def restore(self, pending): ...
    def log_artifact(self, path, artifact_path=None): ...
    def log_table(self, rows, artifact_file): ...
    def log_datasets(self, datasets): ...


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``root/<hash[:12]>``; a folder an older version named by an older identity of the run is
    renamed to it (so an interrupted run resumes from its checkpoint)."""
    new = Path(root) / config_hash(cfg)[:12]
    for old in (Path(root) / h[:12] for h in legacy_hashes(cfg).values()):
        if new.exists():
            break
        if old.is_dir():
            try:
                old.rename(new)
            except OSError:  # another worker moved it first
                pass
    return new


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        *,
        tracker: Tracker | None = None,
        progress: bool = True,
        on_evaluate: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        """``on_evaluate(step, dev_metrics)`` is called after every evaluation during training; it may
        raise (e.g. ``optuna.TrialPruned``) to stop the run, whose checkpoint and metrics are kept."""
        self.on_evaluate = on_evaluate
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = resolve_device(cfg.train.device)
        self.dist = distributed.from_env(self.device)
        # Rank 0 alone logs, checkpoints and decodes; the other ranks only compute gradients.
        self.tracker: Tracker = (tracker or LocalTracker(self.out_dir)) if self.dist.is_main else _NullTracker()
        self.progress = progress
        self.hash = config_hash(cfg)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        keep_freed_memory()  # every step reuses the memory of the last one instead of page-faulting it in again
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._check_out_dir()
        self.dist.barrier()
        self.data = self._setup_data()
        self.model = self._setup_model()
        self.features = self._setup_features()
        self.optimizer = self._setup_optimizer()
        self.scheduler = self._setup_scheduler()
        self.state = self._load_checkpoint() or TrainState()
        # Execution settings may change between a run and its resumption (they are not its identity):
        # tags (mutable) say what this attempt runs with; the params keep what the run started with.
        self.tracker.set_tags({f"exec.{k}": str(v) for k, v in execution_dict(self.cfg).items()})
        if self.state.step == 0:
            self.tracker.log_metrics({k: float(v) for k, v in self._skipped.items()}, step=0)
            self.tracker.log_params(flatten(self.cfg))
            self.tracker.set_tags({"config_hash": self.hash, "harness.identity": "2"})
            for name, value in self.model.param_counts().items():
                self.tracker.log_metrics({name: float(value)}, step=0)
            # The widths the projector maps between, as built: analysis reads them instead of loading models.
            widths = {"model/d_enc": float(self.model.encoder.dim),
                      "model/d_llm": float(self.model.llm.get_input_embeddings().weight.shape[1])}
            self.tracker.log_metrics(widths, step=0)
            self.tracker.log_datasets(self._dataset_records())
            if self.dist.enabled:  # what one rank holds of the LLM: all of it (DDP) or its shard (FSDP)
                local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in self.model.llm.parameters())
                self.tracker.log_metrics({"dist/world_size": float(self.dist.world), "dist/llm_params_per_rank": float(local)}, step=0)

    def _check_out_dir(self) -> None:
        path = self.out_dir / "config.yaml"
        if path.exists() and (self.out_dir / "config_hash").read_text().strip() not in (self.hash, *legacy_hashes(self.cfg).values()):
            raise RuntimeError(f"{self.out_dir} holds a run of another configuration; choose another output folder")
        path.write_text(to_yaml(self.cfg))
        (self.out_dir / "config_hash").write_text(self.hash + "\n")

    def _setup_data(self) -> Datasets:
        d = self.cfg.data
        self._skipped: dict[str, int] = {}
        for key, path in [("data.train", d.train), ("data.dev", d.dev), *((f"data.test.{k}", v) for k, v in d.test.items())]:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"{key}: manifest {path} not found (make one with `harness data synth`, "
                    "`harness data librispeech ROOT` or `harness quickstart`)"
                )
        keep = lambda utts, name: self._filter_long(utts, name)  # noqa: E731
        train = keep(read_manifest(d.train), "train")
        if d.max_train_utterances is not None:
            train = train[: d.max_train_utterances]
        tests = {name: keep(read_manifest(path), name) for name, path in d.test.items()}
        for name, path in d.optional_test.items():
            if Path(path).exists():
                tests[name] = keep(read_manifest(path), name)
            else:
                log.warning("optional test split %s: %s not found, skipped", name, path)
        return Datasets(train, keep(read_manifest(d.dev), "dev"), tests)

    def _dataset_records(self) -> list[DatasetRecord]:
        """Every split this run reads (after the length filter), as the tracker's dataset inputs."""
        d = self.cfg.data
        paths = {"train": d.train, "dev": d.dev, **d.test, **d.optional_test}
        splits = [("train", "training", self.data.train), ("dev", "validation", self.data.dev),
                  *((name, "test", utts) for name, utts in self.data.tests.items())]
        return [DatasetRecord(name=name, context=context, source=str(paths[name]),
                              digest=manifest_digest(paths[name]).split(":", 1)[1][:16], utterances=len(utts),
                              hours=sum(u.duration for u in utts) / 3600)
                for name, context, utts in splits]

    def _filter_long(self, utts: list[Utterance], name: str) -> list[Utterance]:
        """Scan (``data.scan``), then drop utterances over ``data.max_duration``: the scan comes first
        because it also checks each manifest ``duration`` against the audio's header, and the length
        filter must not trust a wrong one."""
        d = self.cfg.data
        if d.scan != "off":
            utts = self._drop_bad_audio(utts, name)
        kept = [u for u in utts if u.duration <= d.max_duration]
        if len(kept) < len(utts):
            log.warning("%s: skipped %d utterances longer than data.max_duration=%.1f s",
                        name, len(utts) - len(kept), d.max_duration)
            self._skipped[f"data/{name}/too_long"] = len(utts) - len(kept)
        if not kept:
            raise ValueError(f"split {name!r} has no utterances to use")
        return kept

    def _drop_bad_audio(self, utts: list[Utterance], name: str) -> list[Utterance]:
        d = self.cfg.data
        bad = check_audio_files(utts, decode=d.scan == "decode")  # also checks each manifest duration
        if not bad:
            return utts
        report = self.out_dir / "bad_audio.jsonl"
        with open(report, "a") as f:
            f.writelines(json.dumps({"split": name, "id": u.id, "audio": u.audio, "reason": r}) + "\n" for u, r in bad)
        listing = "; ".join(f"{u.audio}: {r}" for u, r in bad[:5])
        if d.on_bad_audio == "stop":
            raise ValueError(f"{name}: {len(bad)} bad audio files (data.on_bad_audio=stop): {listing}")
        log.warning("%s: skipped %d bad audio files (listed in %s): %s", name, len(bad), report, listing)
        self._skipped[f"data/{name}/bad_audio"] = len(bad)
        bad_ids = {u.id for u, _ in bad}
        return [u for u in utts if u.id not in bad_ids]

    def _setup_model(self) -> SpeechLLM:
        model = build_model(self.cfg, device=self.device)
        if self.dist.enabled and self.cfg.decode.ctc_weight > 0:  # before training, not after it
            raise ValueError("decode.ctc_weight > 0 (joint CTC decoding) decodes in one process; under torchrun set "
                             "decode.ctc_weight=0 and decode the finished run with `harness eval RUN decode.ctc_weight=W`")
        if self.dist.enabled and self.cfg.train.parallel == "fsdp":
            if any(p.requires_grad for p in model.llm.parameters()):
                raise ValueError("train.parallel=fsdp shards a frozen LLM; it does not support llm.lora.enabled=true yet")
            model.use_onednn_linears(False)  # sharded weights are gathered anew for every pass: nothing to pack once
            distributed.shard_llm(model.llm)
        if self.cfg.train.compile:
            model.compile_for_training()
        return model

    def _autocast(self) -> torch.autocast:
        """bf16 autocast where it pays (CUDA by default), fp32 otherwise."""
        p = self.cfg.train.precision
        bf16 = p == "bf16" or (p == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _setup_features(self) -> FeatureCache | None:
        """The frozen encoder's frames for every split, computed once (shared by all runs)."""
        if self.cfg.encoder.trainable or not self.cfg.encoder.cache:
            return None
        from harness.cache import cache_dir

        cache = FeatureCache(self.model.encoder, reference=self.cfg.encoder.name, root=cache_dir())
        utts = [*self.data.train, *self.data.dev[: self.cfg.train.eval_utterances], *(u for v in self.data.tests.values() for u in v)]
        if self.dist.is_main:
            cache.fill(utts, progress=self.progress)
        self.dist.barrier()  # the other ranks read what rank 0 wrote
        return cache

    def _setup_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        # One fused kernel per step instead of a dozen passes over the parameters (1.8 ms vs 6.6 ms on
        # 2 CPU cores for the linear projector's 5.1M parameters: `python -m harness.bench.levers`).
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(params, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay, fused=fused)

    def _setup_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        t = self.cfg.train

        def factor(step: int) -> float:
            if step < t.warmup_steps:
                return (step + 1) / t.warmup_steps
            if t.schedule == "constant":
                return 1.0
            progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
            if t.schedule == "linear":
                return max(0.0, 1.0 - progress)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # ------------------------------------------------------------------ data order
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        t = self.cfg.train
        if t.order == "short_first" and epoch == 0:
            if t.batch_seconds is not None:
                return batches_shortest_first(self.data.train, max_seconds=t.batch_seconds)
            return batches_shortest_first(self.data.train, batch_size=t.batch_size)
        if t.batch_seconds is not None:
            return batches_by_duration(self.data.train, t.batch_seconds, shuffle=True, seed=t.seed, epoch=epoch)
        return batches_by_count(self.data.train, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch)

    def _next_batch(self) -> list[Utterance]:
        """The next batch of the deterministic (seed, epoch) order, resumable at any position."""
        while True:
            if self.state.epoch not in self._order_cache:
                self._order_cache = {self.state.epoch: self._epoch_batches(self.state.epoch)}
            order = self._order_cache[self.state.epoch]
            if self.state.batch_in_epoch < len(order):
                break
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        idx = order[self.state.batch_in_epoch]
        self.state.batch_in_epoch += 1
        return [self.data.train[i] for i in idx]

    # ------------------------------------------------------------------ the loop
    def train(self) -> RunResult:
        t = self.cfg.train
        done = self.out_dir / "result.json"
        if (self.state.step >= t.max_steps or self.state.stopped_early) and done.exists():
            # Finished before (e.g. killed between finishing and being marked done): report, don't redo.
            blob = json.loads(done.read_text())
            return RunResult(self.out_dir, self.hash, self.state, blob["metrics"])
        self._order_cache: dict[int, list[list[int]]] = {}
        self.model.train()
        bar = tqdm(total=t.max_steps, initial=self.state.step, desc="train", unit="step", disable=not self.progress)
        stop = _GracefulStop()
        try:
            with stop:
                self._loop(bar, stop)
        except KeyboardInterrupt:
            # SIGINT/SIGTERM (graceful, between steps) or a second signal: keep everything done so far.
            self.save_checkpoint()
            raise
        finally:
            bar.close()
        return self.finish()

    def _loop(self, bar, stop: _GracefulStop) -> None:
        t = self.cfg.train
        while self.state.step < t.max_steps and not self.state.stopped_early:
            if self.dist.any(stop.requested):  # every rank stops at the same step boundary
                raise KeyboardInterrupt("stop requested")
            # one optimizer step and its bookkeeping
            metrics = self._train_step()
            self.state.step += 1
            self.state.acc_history.append(metrics["train/acc"])  # NaN in CTC-only steps
            bar.update(1)
            shown = {k.split("/")[1]: f"{v:.3f}" for k, v in metrics.items()
                     if k in ("train/loss", "train/acc", "train/ctc_loss") and math.isfinite(v)}
            bar.set_postfix(**shown)
            if self.state.step % t.log_every == 0:
                self.tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=self.state.step)
            if t.eval_every and self.state.step % t.eval_every == 0 and self.state.step < t.max_steps:
                dev = self._evaluate()  # every rank takes part and gets the same numbers
                if self.on_evaluate is not None:
                    self.save_checkpoint()  # what the callback decides on is kept, whatever it decides
                    self.on_evaluate(self.state.step, dev)
            if self.state.step % t.checkpoint_every == 0:
                self.save_checkpoint()

    def _train_step(self) -> dict[str, float]:
        t = self.cfg.train
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        batches = [self._next_batch() for _ in range(t.grad_accum)]  # global batches, same on every rank
        total_tokens = sum(len(self.model.prompt.target_ids(u.text)) for b in batches for u in b)
        # adapter.ctc.lm_after: the first steps train the CTC loss alone, without running the LLM.
        self.model.run_lm = self.state.step >= self.cfg.adapter.ctc.lm_after
        loss_sum, objective_sum, ctc_sum, correct, audio = 0.0, 0.0, 0.0, 0, 0.0
        for batch in (self.dist.shard(b) for b in batches):
            if not batch:
                continue
            frames, lengths = speech_frames(self.model, batch, self.features)
            with self._autocast():
                out = self.model.forward_frames(frames, lengths, [u.text for u in batch])
            # Token-weighted over the whole accumulated step, as one big batch would be.
            share = int(out["tokens"]) / total_tokens
            (out["objective"] * share).backward()
            loss_sum += float(out["loss"].detach()) * int(out["tokens"])
            objective_sum += float(out["objective"].detach()) * share
            ctc_sum += float(out.get("ctc_loss", torch.zeros(())).detach()) * share
            correct += int(out["correct"])
            audio += sum(u.duration for u in batch)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.dist.sum_gradients(params)
        loss_sum, correct, audio = self.dist.sum(loss_sum), self.dist.sum(correct), self.dist.sum(audio)
        objective_sum, ctc_sum = self.dist.sum(objective_sum), self.dist.sum(ctc_sum)
        loss = loss_sum / total_tokens
        if not math.isfinite(objective_sum) or (self.model.run_lm and not math.isfinite(loss)):
            raise TrainingDiverged(self.state.step + 1, loss if self.model.run_lm else objective_sum)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip if t.clip is not None else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        seconds = time.perf_counter() - start
        self.state.audio_seconds += audio
        self.state.train_seconds += seconds
        metrics = {
            "train/loss": loss,
            "train/acc": correct / total_tokens,
            "train/lr": lr,
            "train/grad_norm": float(grad_norm),
            "train/audio_sec_per_sec": audio / seconds,
            "train/step_seconds": seconds,
        }
        if self.model.ctc is not None:
            metrics["train/ctc_loss"] = ctc_sum
            metrics["train/objective"] = objective_sum
        if not self.model.run_lm:  # the LLM did not run: no LM loss or accuracy to log
            metrics["train/loss"] = metrics["train/acc"] = float("nan")
        return metrics

    def _evaluate(self, *, record: bool = True) -> dict[str, float]:
        t = self.cfg.train
        dev = self.data.dev[: t.eval_utterances]
        with self._autocast():
            tf = teacher_forced(self.model, dev, batch_size=max(t.batch_size, 1), features=self.features, dist=self.dist)
            hyps = transcribe(self.model, dev, self.cfg.decode, desc="dev", progress=self.progress and self.dist.is_main,
                              features=self.features, dist=self.dist)
        wer, _ = word_errors([u.text for u in dev], hyps, normaliser=self.cfg.decode.normaliser)
        metrics = {"dev/loss": tf["loss"], "dev/acc": tf["acc"], "dev/wer": wer.wer}
        if self.model.ctc is not None:  # the CTC head's own reading, without the LLM
            ctc_hyps = ctc_transcribe(self.model, dev, batch_size=self.cfg.decode.batch_size, features=self.features)
            metrics["dev/ctc_wer"] = word_errors([u.text for u in dev], ctc_hyps, normaliser=self.cfg.decode.normaliser)[0].wer
        if record:
            self.tracker.log_metrics(metrics, step=self.state.step)
        if self.dist.is_main:
            log.info("step %d: %s", self.state.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if tf["loss"] < self.state.best_dev_loss:
            self.state.best_dev_loss, self.state.evals_without_improvement = tf["loss"], 0
        else:
            self.state.evals_without_improvement += 1
            if t.early_stop_patience and self.state.evals_without_improvement >= t.early_stop_patience:
                log.info("early stop at step %d: dev loss did not improve for %d evaluations",
                         self.state.step, self.state.evals_without_improvement)
                self.state.stopped_early = True
        return metrics

    # ------------------------------------------------------------------ the end
    def finish(self) -> RunResult:
        # Every rank decodes its share of each split; rank 0 alone writes, logs and saves.
        final = dict(self._evaluate(record=False))  # logged below with the other final metrics
        splits = {}
        for name, utts in self.data.tests.items():
            with self._autocast():
                splits[name] = evaluate_split(self.model, name, utts, self.cfg.decode, features=self.features,
                                              progress=self.progress and self.dist.is_main, dist=self.dist)
        if not self.dist.is_main:
            self.dist.barrier()
            return RunResult(self.out_dir, self.hash, self.state, {})
        for name, res in splits.items():
            final.update(res.wer.as_metrics(f"test/{name}"))
            self._write_rows(name, res.rows)
            self.tracker.log_table(res.rows, f"transcripts/{name}.json")
        final["train/wall_seconds"] = self.state.train_seconds
        final["train/steps"] = float(self.state.step)
        # Steps that ran the LLM (all of them, unless adapter.ctc.lm_after trained the CTC loss alone first).
        ran = [(i, a) for i, a in enumerate(self.state.acc_history, 1) if math.isfinite(a)]
        steps, accs = [i for i, _ in ran], [a for _, a in ran]
        emergence = find_emergence(steps, accs)
        final.update(emergence.as_metrics())
        self.tracker.log_metrics(final, step=self.state.step)
        plot_curve(steps, accs, emergence, str(self.out_dir / "accuracy_curve.png"), title=self.hash[:12])
        save_file(checkpoint.contiguous(self.model.trainable_state_dict()), str(self.out_dir / "trainable.safetensors"))
        for name in ("config.yaml", "trainable.safetensors", "accuracy_curve.png"):
            self.tracker.log_artifact(self.out_dir / name)
        self.save_checkpoint()  # also flushes the tracker
        result = RunResult(self.out_dir, self.hash, self.state, final)
        (self.out_dir / "result.json").write_text(json.dumps({"state": asdict(self.state), "metrics": final}, indent=2))
        self.dist.barrier()
        return result

    def _write_rows(self, name: str, rows: list[dict[str, Any]]) -> None:
        path = self.out_dir / "transcripts" / f"{name}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        checkpoint.save(self.out_dir, self.model.trainable_state_dict(), {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **checkpoint.rng_state(),
            "state": asdict(self.state),
            "pending_metrics": self.tracker.pending(),  # see harness.tracking.trackers: nothing lost, nothing twice
        })
        self.tracker.flush()  # everything the tracker holds is now covered by this checkpoint

    def _load_checkpoint(self) -> TrainState | None:
        found = checkpoint.load(self.out_dir, self.device)
        if found is None:
            return None
        ckpt, weights, blob = found
        missing = set(self.model.trainable_state_dict()) - set(weights)
        if missing:
            raise CheckpointError(f"checkpoint {ckpt} lacks trainable weights {sorted(missing)[:5]}")
        self.model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        checkpoint.restore_rng(blob)
        self.tracker.restore(blob.get("pending_metrics", []))
        self.tracker.flush()
        log.info("resumed from %s at step %d", ckpt, blob["state"]["step"])
        return TrainState(**blob["state"])

    def cleanup(self) -> None:
        self.tracker.flush()


def run_training(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    tracker: Tracker | None = None,
    progress: bool = True,
    on_evaluate: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Train (or resume) one run into ``out_dir`` and evaluate it on every test split."""
    trainer = Trainer(cfg, out_dir, tracker=tracker, progress=progress, on_evaluate=on_evaluate)
    trainer.setup()
    try:
        return trainer.train()
    finally:
        trainer.cleanup()
