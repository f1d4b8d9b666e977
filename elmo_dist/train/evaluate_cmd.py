"""`elmo-dist evaluate RUN_DIR|CHECKPOINT [key=value ...]`: exact held-out perplexity of saved weights.

    elmo-dist evaluate runs/debug                       # newest checkpoint, the run's own held-out split
    elmo-dist evaluate runs/debug/checkpoints/step-500 data.dir=other/prepared

The checkpoint's own config is the base; overrides may point `data.dir` at another prepared corpus,
which must share the run's vocabulary.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from elmo_dist import config as C
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError
from elmo_dist.model import build_bilm
from elmo_dist.train import checkpoint as ckpt
from elmo_dist.train.accel import resolve_device
from elmo_dist.train.evaluate import evaluate_bilm, unigram_ppl


def evaluate_checkpoint(path: str, overrides: list[str], out: str | None = None) -> dict:
    latest = ckpt.resolve(path)
    if not ckpt.has_softmax(latest):
        raise CheckpointError(f"{latest}: imported without a softmax, so it has no perplexity; import with --vocab "
                              "and --softmax, or train one: elmo-dist pretrain CONFIG train.init_from=" + str(latest))
    cfg = C.load_config(latest / "config.yaml", overrides)
    corpus = PreparedCorpus(cfg.data.dir, cfg.model.max_chars_per_token)
    run_vocab = ckpt.run_dir_of(latest) / "vocab.txt"
    if run_vocab.is_file() and Vocabulary.load(run_vocab).tokens != corpus.vocab.tokens:
        raise CheckpointError(f"{cfg.data.dir}: its vocabulary differs from {run_vocab}, the one the run was trained with")
    model = build_bilm(cfg.model, len(corpus.vocab))
    state = ckpt.load_model_state(latest)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{latest}: weights do not fit the config ({str(e).splitlines()[1].strip()})") from None
    device = resolve_device(cfg.train.device)
    model.to(device)
    t0 = time.perf_counter()
    res = evaluate_bilm(model, corpus, cfg.data, device)
    seconds = time.perf_counter() - t0
    state_file = latest / ("export.json" if ckpt.is_export(latest) else "trainer_state.json")
    step = json.loads(state_file.read_text())["step"]
    summary = {**res, "unigram_ppl": unigram_ppl(corpus, cfg.data.max_eval_tokens), "steps": step,
               "tokens": res["val_tokens"],
               "tokens_per_s": res["val_tokens"] / max(seconds, 1e-9), "checkpoint": str(latest), "data_dir": cfg.data.dir}
    out_dir = Path(out) if out else ckpt.run_dir_of(latest) / "eval" / latest.name
    out_dir.mkdir(parents=True, exist_ok=True)
    summary["summary_path"] = str(out_dir / "summary.json")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    OmegaConf.save(OmegaConf.structured(cfg), out_dir / "config.yaml")
    return summary
