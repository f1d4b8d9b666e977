"""The `elmo-dist` command line (also `python -m elmo_dist`).

    elmo-dist prepare 'corpus/*.txt' --out data/prepared [--tokenizer moses]
    elmo-dist pretrain configs/debug.yaml [key=value ...]
    elmo-dist evaluate runs/debug [key=value ...]
    elmo-dist finetune configs/finetune.yaml [key=value ...]
    elmo-dist embed runs/debug sentences.txt out.hdf5
    elmo-dist export runs/debug --out models/debug
    elmo-dist submit pretrain|finetune|pipeline CONFIG [key=value ...] [--slurm.key=value ...]
    elmo-dist submit prepare 'crawl/*.jsonl.zst' --out /shared/crawl [--slurm.key=value ...]
    elmo-dist import-elmo options.json weights.hdf5 OUT_DIR [--vocab V --softmax S]
    elmo-dist import-elmo ELMOFORMANYLANGS_DIR OUT_DIR
    elmo-dist export-elmo RUN_DIR OUT_DIR

A mistake a user can fix (a missing file, a bad key, a broken checkpoint) prints one line,
`elmo-dist: error: ...`, and exits with status 2; `--debug` adds the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import tempfile

from elmo_dist import __version__, cli_prepare
from elmo_dist.errors import LaunchError, UserError


def _counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def _add_run_parsers(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain the biLM (resumes automatically from RUN_DIR)",
                       description="Pretrain the ELMo biLM. Running the same command again resumes from the newest "
                                   "complete checkpoint in train.run_dir.")
    p.add_argument("config", help="YAML run config, e.g. configs/debug.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    p.add_argument("--stop-at-step", type=int, default=0,
                   help="checkpoint and stop at this step without changing the run's schedule (resume later)")
    p.add_argument("--requeue", action="store_true",
                   help="inside a Slurm batch job (slurm/pretrain.sh): after an early stop (preemption warning, "
                        "time limit) requeue the job, which resumes from the checkpoint (up to slurm.max_requeues)")
    p.add_argument("--estimate", action="store_true",
                   help="print the time to train.max_steps, per epoch and for N processes, measured on the "
                        "configured device (a few steps, one evaluation, one checkpoint), then exit; writes nothing")
    p.add_argument("--estimate-steps", type=int, metavar="N", help="--estimate: steps timed after 3 discarded (20)")
    p.add_argument("--processes", type=_counts, metavar="N[,N...]", help="--estimate: also for N processes (8)")
    p.add_argument("--efficiency", type=float, help="--estimate: assumed data-parallel efficiency (0.9)")
    p.add_argument("--json", action="store_true", help="--estimate: print the estimate as JSON")
    e = sub.add_parser("evaluate", help="held-out perplexity of a run or checkpoint",
                       description="Exact full-softmax held-out perplexity (fwd, bwd, mean) and the unigram baseline.")
    e.add_argument("checkpoint", help="a run directory (its newest checkpoint) or a checkpoints/step-N directory")
    e.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.dir=other/prepared")
    e.add_argument("--out", help="where summary.json goes (default: RUN_DIR/eval/step-N)")
    x = sub.add_parser("export", help="write consolidated fp32 weights (safetensors) and the config of a run",
                       description="Consolidate a run's newest (or a given) checkpoint, whatever trained it "
                                   "(DDP or ZeRO 1-3), into model.safetensors + config.yaml + vocab.txt.")
    x.add_argument("run", help="a run directory or a checkpoints/step-N directory")
    x.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    f = sub.add_parser("finetune", help="train text classifiers on a pretrained biLM's layers",
                       description="Train the layer-combination variants (frozen, scalar_mix, learned_fn, top) on a "
                                   "text classification data set and compare them with a TF-IDF baseline.")
    f.add_argument("config", help="YAML fine-tuning config, e.g. configs/finetune.yaml")
    f.add_argument("overrides", nargs="*", help="dotted overrides, e.g. bilm.path=runs/x 'variants=[frozen,top]'")
    f.add_argument("--variant", help="train only this one of `variants` (a name, or an index from 0 such as "
                                     "$SLURM_ARRAY_TASK_ID), in RUN_DIR/<variant>")
    m = sub.add_parser("embed", help="write ELMo representations of a text file to HDF5",
                       description="One sentence per line in; HDF5 out, keyed by line number (0-based) as "
                                   "`allennlp elmo` does: [L+1, tokens, dim] per sentence, "
                                   "or [tokens, dim] with --weights.")
    m.add_argument("run", help="a pretraining run directory or checkpoint directory")
    m.add_argument("input", help="text file, one sentence per line (tokenized like the pretraining corpus)")
    m.add_argument("output", help="HDF5 file to write")
    m.add_argument("--weights", help="comma-separated layer weights for a single mixed layer, e.g. 0.33,0.33,0.34")
    m.add_argument("--pool", choices=["none", "mean"], default="none",
                   help="mean: one vector per sentence, the mean over its tokens ([L+1, dim], or [dim] "
                        "with --weights)")
    m.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="float16 halves the file (values rounded to 11 significant bits)")
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("--no-sentence-boundaries", dest="sentence_boundaries", action="store_false",
                   help="feed the bare tokens; by default each line is read as <S> tokens </S> and the two "
                        "marker positions are dropped, as bilm-tf and AllenNLP do")


def _add_submit(sub) -> None:
    s = sub.add_parser("submit", help="run pretrain / finetune / the whole pipeline as Slurm jobs (submitit)",
                       description="Queue jobs through submitit: Slurm where `srun` exists, local processes elsewhere, "
                                   "or in this process with slurm.cluster=debug. Job parameters come from the config's "
                                   "`slurm` section; `--slurm.key=value` is the same as the override "
                                   "`slurm.key=value`.")
    kinds = s.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, help_ in (("pretrain", "one pretraining job (requeued and resumed on preemption)"),
                        ("finetune", "the classifier variants as a job array, one task per variant"),
                        ("pipeline", "pretraining, then the variants as an array that waits for it (afterok)")):
        k = kinds.add_parser(kind, help=help_, description=help_)
        k.add_argument("config", help="YAML config (a fine-tuning config for `finetune`)")
        k.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=1000 slurm.partition=gpu")
        k.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
        if kind == "finetune":
            k.add_argument("--bilm", help="the pretraining run directory (sets bilm.path)")
        if kind == "pipeline":
            k.add_argument("--finetune", default="configs/finetune.yaml", metavar="CONFIG",
                           help="fine-tuning config (default configs/finetune.yaml); bilm.path is set for you")
            k.add_argument("--ft", action="append", default=[], metavar="KEY=VALUE",
                           help="an override of the fine-tuning config (repeatable)")
    cli_prepare.add_submit_prepare(kinds)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"elmo-dist: error: {message} (see `{self.prog} --help`)\n")


def _add_interop(sub) -> None:
    i = sub.add_parser("import-elmo",
                       help="convert official ELMo weights (options.json + weights.hdf5) or an ELMoForManyLangs "
                            "model directory into a run-like directory",
                       usage="elmo-dist import-elmo {options.json weights.hdf5 OUT [--vocab V --softmax S] | DIR OUT}",
                       description="Convert bilm-tf / AllenNLP weight files into a directory that embed, finetune "
                                   "and evaluate take like a run, and that pretrain can start from (train.init_from); "
                                   "given two paths, an ELMoForManyLangs model directory into one that embed and "
                                   "finetune take.")
    i.add_argument("options", help="options.json, or an ELMoForManyLangs model directory")
    i.add_argument("weights", help="weights.hdf5 (after options.json), or OUT (after a model directory)")
    i.add_argument("out", nargs="?", help="output directory (after options.json weights.hdf5)")
    i.add_argument("--vocab", help="vocabulary file (<S>, </S>, <UNK>, then words), needed with --softmax")
    i.add_argument("--softmax", help="softmax.hdf5 as written by export-elmo (softmax/W, softmax/b)")
    e = sub.add_parser("export-elmo", help="write a run in the official ELMo format (options.json + weights.hdf5)",
                       description="Write options.json and weights.hdf5 in bilm-tf's layout, plus softmax.hdf5 and "
                                   "vocab.txt (the format has no place for the softmax).")
    e.add_argument("run", help="a run directory, checkpoint or export")
    e.add_argument("out", help="output directory")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="elmo-dist", description="Distributed batch trainer for ELMo biLMs.")
    parser.add_argument("--version", action="version", version=f"elmo-dist {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_prepare.add_prepare(sub)
    _add_run_parsers(sub)
    _add_submit(sub)
    _add_interop(sub)
    return parser


def _print_ppl(summary: dict) -> None:
    if "val_ppl" in summary:
        ratio = summary["val_ppl"] / summary["unigram_ppl"]
        print(f"held-out perplexity: fwd {summary['val_ppl_fwd']:.2f}  bwd {summary['val_ppl_bwd']:.2f}  "
              f"mean {summary['val_ppl']:.2f}  |  unigram_ppl {summary['unigram_ppl']:.2f}  "
              f"(val_ppl / unigram_ppl = {ratio:.3f})")


def cmd_pretrain(args) -> int:
    from elmo_dist import commands
    from elmo_dist.config import PretrainConfig, load

    cfg = load(PretrainConfig, args.config, args.overrides)  # before importing torch: a config error comes at once
    if args.estimate or args.json or any(v is not None for v in (args.estimate_steps, args.processes, args.efficiency)):
        return _estimate(cfg, args)
    from elmo_dist.runtime.stop import StopReason, StopRequest, under_elastic_agent

    stopper = args.stopper.configure(cfg.train.stop_signals, cfg.train.deadline_margin_s)
    summary, is_main = commands.pretrain(cfg, stopper, args.stop_at_step)
    reason = None if summary["finished"] else summary["stopped"]
    status = StopRequest.exit_status(reason)  # every rank exits with it, so srun reports the stop too
    if reason is not None and args.requeue:
        from elmo_dist.launch.requeue import RequeueRefused, requeue_after_stop, slurm_restarts

        try:  # requeued: does not return
            requeue_after_stop(summary, stopper, cfg.slurm.max_requeues, slurm_restarts(), is_main=is_main)
        except RequeueRefused as e:
            print(f"elmo-dist: {e}", file=sys.stderr)
            return status
    stopper.ignore()
    if not is_main:  # rank 0 reports
        return status
    if summary.get("already_finished"):
        print(f"{cfg.train.run_dir}: already finished at step {summary['steps']} (train.max_steps="
              f"{cfg.train.max_steps}); nothing to do, nothing changed. Raise train.max_steps to train further.")
        _print_ppl(summary)
        return 0
    if reason is not None:
        why = (f"exit status 0, not {StopReason(reason).exit_status}: under torchrun any other status counts as "
               "a failure and, with --max-restarts, restarts the run" if under_elastic_agent()
               else f"exit status {status}")
        print(f"stopped at step {summary['steps']} ({reason}); checkpoint {summary['checkpoint']}. "
              f"Run the same command again to resume ({why}).", file=sys.stderr)
        return status
    _print_ppl(summary)
    speed = f"{summary['tokens_per_s']:,.0f} tokens/s" if summary["tokens_per_s"] is not None else "no steps to run"
    print(f"steps {summary['steps']}, {speed}; run directory {cfg.train.run_dir} "
          f"(tensorboard --logdir {cfg.train.run_dir})")
    return 0


def _estimate(cfg, args) -> int:
    from elmo_dist import commands
    from elmo_dist.train.estimate import describe

    if not args.estimate or args.stop_at_step or args.requeue:
        raise UserError("--json, --estimate-steps, --processes and --efficiency go with --estimate, which trains "
                        "nothing to stop or requeue (no --stop-at-step, no --requeue)")
    given = {k: v for k, v in (("steps", args.estimate_steps), ("processes", args.processes),
                               ("efficiency", args.efficiency)) if v is not None}
    res = commands.estimate(cfg, args.stopper.configure(cfg.train.stop_signals, 0.0), **given)
    print(json.dumps(res, indent=1) if args.json else "\n".join(describe(res)))
    return 0


def cmd_evaluate(args) -> int:
    from elmo_dist import commands

    summary = commands.evaluate(args.checkpoint, args.overrides, args.out)
    for warning in summary["warnings"]:
        print(f"elmo-dist: warning: {warning}", file=sys.stderr)
    _print_ppl(summary)
    print(f"summary: {summary['summary_path']}")
    return 0


def cmd_export(args) -> int:
    from elmo_dist import commands

    res = commands.export(args.run, args.out)
    print(f"exported step {res['step']} of {res['source']} -> {res['out']}")
    return 0


def cmd_finetune(args) -> int:
    from elmo_dist import commands
    from elmo_dist.config import FinetuneConfig, load, single_variant

    cfg = load(FinetuneConfig, args.config, args.overrides)  # before importing torch and scikit-learn
    commands.finetune(single_variant(cfg, args.variant) if args.variant is not None else cfg)
    return 0


def cmd_embed(args) -> int:
    from elmo_dist import commands

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise UserError(f"--weights '{args.weights}' is not a comma-separated list of numbers") from None
    pool = None if args.pool == "none" else args.pool
    res = commands.embed(args.run, args.input, args.output, weights, args.batch_size, args.device,
                         args.sentence_boundaries, pool, args.dtype)
    what = "one mean vector per sentence, " if pool else ""
    print(f"embedded {res['sentences']:,} sentences ({res['skipped_empty']} empty lines skipped), {what}"
          f"{res['layers']} layers x {res['dim']} dims, {res['dtype']} -> {res['out']}")
    return 0


def cmd_import_elmo(args) -> int:
    from elmo_dist import commands

    if args.out is None and (args.vocab or args.softmax):
        raise UserError("--vocab and --softmax go with options.json weights.hdf5 OUT; an ELMoForManyLangs model "
                        "directory brings its word.dic and has no softmax")
    res = (commands.import_manylangs(args.options, args.weights) if args.out is None  # DIR OUT
           else commands.import_elmo(args.options, args.weights, args.out, args.vocab, args.softmax))
    for warning in res.get("warnings", []):
        print(f"elmo-dist: warning: {warning}", file=sys.stderr)
    softmax = (f"softmax over {res['vocab']:,} words" if res["softmax"]
               else f"{res['vocab']:,} words, no softmax (train one with train.init_from)")
    print(f"imported {res['parameters']:,} parameters, {softmax} -> {res['out']}")
    return 0


def cmd_export_elmo(args) -> int:
    from elmo_dist import commands

    res = commands.export_elmo(args.run, args.out)
    for warning in res["warnings"]:
        print(f"elmo-dist: warning: {warning}", file=sys.stderr)
    extra = " + softmax.hdf5, vocab.txt" if res["softmax"] else ""
    print(f"exported {res['source']} -> {res['out']}/options.json, weights.hdf5{extra}")
    return 0


def cmd_submit(args) -> int:
    from submitit.core.utils import FailedJobError

    from elmo_dist.launch import submit

    with _own_stderr() as sbatch_said:  # submitit lets sbatch write to our stderr
        try:
            if args.kind == "prepare":
                return cli_prepare.cmd_submit_prepare(args)
            elif args.kind == "pretrain":
                jobs = {"pretrain": submit.submit_pretrain(args.config, args.overrides)}
            elif args.kind == "finetune":
                jobs = {"finetune": submit.submit_finetune(args.config, args.overrides, bilm_path=args.bilm)}
            else:  # the job parameters (slurm.*) go to both jobs, the other overrides to pretraining
                slurm = [o for o in args.overrides if o.startswith("slurm.")]
                rest = [o for o in args.overrides if not o.startswith("slurm.")]
                p = submit.submit_pipeline(args.config, rest, args.finetune, args.ft, slurm_overrides=slurm)
                jobs = {"pretrain": p.pretrain, "finetune": p.finetune}
        except FailedJobError as e:  # sbatch refused the job: its own message is the one line that matters
            lines = [line for line in (sbatch_said() + "\n" + str(e)).splitlines() if line.strip()]
            refusal = next((line for line in lines if line.startswith("sbatch: error:")), lines[-1] if lines else "")
            raise LaunchError(refusal or "sbatch refused the job") from None
    for line in submit.describe(jobs):
        print(line)
    if args.wait:
        for line in submit.wait(jobs):
            print(line)
    return 0


COMMANDS = {"prepare": cli_prepare.cmd_prepare, "pretrain": cmd_pretrain, "evaluate": cmd_evaluate,
            "finetune": cmd_finetune, "export": cmd_export, "embed": cmd_embed, "submit": cmd_submit,
            "import-elmo": cmd_import_elmo, "export-elmo": cmd_export_elmo}


@contextlib.contextmanager
def _own_stderr():
    """Hold what child processes write to file descriptor 2 (sbatch's messages) while the block runs;
    yields a function that returns it so far. Passed on to stderr at the end, unless the block raised
    (the error line then says what mattered)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)

        def said() -> str:
            held.seek(0)
            return held.read().decode(errors="replace")

        try:
            yield said
        except BaseException:
            os.dup2(saved, 2)
            raise
        else:
            os.dup2(saved, 2)
            sys.stderr.write(said())
        finally:
            os.close(saved)


_FILE_SYSTEM_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR,
                       errno.ENOTDIR, errno.EIO)


def _slurm_flags(argv: list[str]) -> list[str]:
    """After `submit`, '--slurm.partition=gpu' is the config override 'slurm.partition=gpu'."""
    if "submit" not in argv:
        return argv
    if argv[argv.index("submit") + 1:][:1] == ["prepare"]:  # its positionals are files: the flag stays a flag
        return [x for a in argv for x in (("--slurm", a[2:]) if a.startswith("--slurm.") else (a,))]
    return [a[2:] if a.startswith("--slurm.") else a for a in argv]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_slurm_flags(sys.argv[1:] if argv is None else list(argv)))
    if args.command == "pretrain":
        from elmo_dist.config import TrainConfig
        from elmo_dist.runtime.stop import stop_request

        # the command's one stop-signal owner, from the first instant (its config is not read yet: the
        # defaults until then); owned for the whole command and never handed back (see StopRequest.listen)
        args.stopper = stop_request(TrainConfig().stop_signals)
    if args.command in ("pretrain", "finetune"):
        from elmo_dist.launch.slurm_env import export_slurm_env

        # srun tasks: SLURM_* -> RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, and the job's deadline
        export_slurm_env()
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"elmo-dist: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a fault of the machine, not of the code: a full disk, a read-only or vanished path that
        # no earlier check caught (commands check their outputs before the work)
        if args.debug or e.errno not in _FILE_SYSTEM_FAULTS:
            raise
        print(f"elmo-dist: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elmo-dist: interrupted", file=sys.stderr)
        return 130
