"""The `compress` command line.

    compress --target jetson model.pt       (same as `compress run ...`)
    compress targets                        list the device profiles
    compress inspect model.pt               what the loader sees in a model file

Exit codes: 0 success, 2 bad input (one line on stderr), 3 the engine failed verification,
130 interrupted (Ctrl-C; the report says which pass, --resume continues), 1 an internal error
(a bug: the traceback is printed).
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from .errors import CompressError, Interrupted
from .progress import Progress
from .version import __version__


class DefaultToRun(click.Group):
    """`compress MODEL ...` means `compress run MODEL ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compress")
def main():
    """Compress a trained PyTorch model into a verified engine for an edge device."""


def _fail(error: CompressError, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


def _overrides(**by_pass: dict) -> dict:
    """Per-pass options the flags set (flags not given are left to the TOML and the defaults)."""
    chosen = {name: {k: v for k, v in options.items() if v is not None} for name, options in by_pass.items()}
    return {name: options for name, options in chosen.items() if options}


@main.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="x86-cpu", show_default=True, help="Device profile name, alias or TOML path.")
@click.option("--calib", "-c", default=None,
              help="Calibration recipe name or TOML path, or the data itself: data.npz (key x, labels y if "
                   "present), data.npy, images/ (class subfolders give labels; scaled to [0,1], resized to the "
                   "model input, grayscale for 1 channel) or sentences.txt (one per line, the model's tokenizer, "
                   "padded to 128 tokens). Data is shuffled (seed 0) into 256 calibration and up to 500 held-out "
                   "samples, split proportionally when there are fewer. Default: random inputs.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Run directory [out/<model>-<target>].")
@click.option("--passes", default=None, help="Comma-separated passes, overriding the target's pipeline.")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="Pipeline TOML: passes = [...] and a table per pass.")
@click.option("--resume", is_flag=True, help="Continue an earlier run in the same directory, skipping finished passes.")
@click.option("--force", is_flag=True, help="Delete an existing run directory and start over.")
@click.option("--model-class", default=None, help="package.module:Class (or file.py:Class) for a state_dict file.")
@click.option("--model-args", default="{}", help="JSON object of constructor arguments for --model-class.")
@click.option("--allow-pickle", is_flag=True, help="Unpickle a pickled nn.Module (runs code from the file: trusted files only).")
@click.option("--input-shape", default=None, help="Input shape(s) where the format has none, e.g. 1x1x28x28 or 1x128,1x128.")
@click.option("--input-dtype", default="float32", show_default=True)
@click.option("--task", type=click.Choice(["classification", "embedding", "regression"]), default=None, help="Default: inferred from the output.")
@click.option("--keep-float", type=click.IntRange(min=0), default=None,
              help="Keep the N most quantization-sensitive layers in the target's higher precision.")
@click.option("--accuracy-budget", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Keep the most sensitive layers in higher precision until the drop before fine-tuning "
                   "is at most this (e.g. 0.005 = half a point), measured as agreement with the teacher "
                   "(top-1 agreement, or cosine for embeddings) on the validation slice of the calibration "
                   "data, not label accuracy. A budget only all-float meets fails with exit 3.")
@click.option("--sparsity", type=float, default=None,
              help="Prune (CoFi) until this fraction of the prunable parameters is removed, e.g. 0.6.")
@click.option("--macs-budget", type=float, default=None,
              help="Prune until the model keeps this fraction of the teacher's MACs per sample, e.g. 0.3.")
@click.option("--latency-budget", type=float, default=None,
              help="Prune until the FP32 latency on the target's runner is this fraction of the teacher's "
                   "(a MACs budget from a cost model fitted to measured variants), e.g. 0.5.")
@click.option("--search", "search_student", is_flag=True,
              help="With --macs-budget / --latency-budget: search a new student architecture (DisWOT, no training) "
                   "and distill it, instead of pruning: the pipeline becomes search, distill + the target's passes.")
@click.option("--device", default=None,
              help="Verify parity and latency on this device: ssh://[user@]host[:port][?python=PATH] or an ssh "
                   "config alias (see `compress profile --help`); default: here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout at the end.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run_command(model, target, calib, out, passes, config, resume, force, model_class, model_args, allow_pickle,
                input_shape, input_dtype, task, keep_float, accuracy_budget, sparsity, macs_budget, latency_budget,
                search_student, device, quiet, as_json, debug):
    """Compress MODEL for a target device and verify the engine."""
    from .api import RunOptions, run
    from .model_io import LoadOptions, parse_input_shapes

    result = None
    try:
        try:
            args = json.loads(model_args)
        except json.JSONDecodeError as e:
            raise CompressError(f"--model-args is not valid JSON: {e}") from None
        if not isinstance(args, dict):
            raise CompressError("--model-args must be a JSON object")
        load = LoadOptions(model_class=model_class, model_args=args, allow_pickle=allow_pickle,
                           input_shapes=parse_input_shapes(input_shape) if input_shape else None,
                           input_dtype=input_dtype, task=task)
        if search_student and sparsity is not None:
            raise CompressError("--sparsity prunes; with --search give --macs-budget or --latency-budget")
        if device:  # a device that cannot be reached fails now, not after minutes of compressing
            from .profile.devices import open_device

            open_device(device).check()
        budgets = {"macs_budget": macs_budget, "latency_budget": latency_budget}
        options = RunOptions(out=out, passes=[p.strip() for p in passes.split(",") if p.strip()] if passes else None,
                             config=config, resume=resume, force=force, quiet=quiet, load=load,
                             overrides=_overrides(
                                 quantize={"keep_float": keep_float, "accuracy_budget": accuracy_budget},
                                 verify={"device": device},
                                 **({"search": budgets} if search_student else
                                    {"prune": {"sparsity": sparsity, **budgets}})))
        result = run(model, target, calib, options)
    except CompressError as e:
        _print_failed_report(e, as_json, quiet)
        _fail(e, debug)
    except KeyboardInterrupt:  # before the pipeline started (loading, calibration): nothing to report
        _fail(Interrupted("interrupted before any pass ran"), debug)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=str))
    if not quiet:
        click.echo(f"\n{result.summary()}\n\nreport: {result.run_dir / 'report.md'}", err=True)


def _print_failed_report(error: CompressError, as_json: bool, quiet: bool) -> None:
    """A run that got as far as writing a report shows its numbers even when it failed."""
    from .report import summary_table

    report = getattr(error, "report", None)
    if report is None:
        return
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    if not quiet:
        click.echo(f"\n{summary_table(report)}\n", err=True)


@main.command("targets")
def targets_command():
    """List the device profiles (one line each)."""
    from .backends import PLANNED
    from .targets import bundled_profiles

    try:
        profiles = bundled_profiles()
    except CompressError as e:
        _fail(e, False)
    width = max(len(p.name) for p in profiles)
    arch_width = max(len(p.device.arch) for p in profiles)
    for p in profiles:
        aliases = f" (alias {', '.join(p.aliases)})" if p.aliases else ""
        planned = " [engine builder not available yet: --passes quantize,export,verify]" if p.backend in PLANNED else ""
        click.echo(f"{p.name.ljust(width)}  {p.backend:<11}  {p.device.arch:<{arch_width}}  {p.summary}{aliases}{planned}")


@main.command("profile")
@click.argument("engines", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--per-layer", is_flag=True, help="Per-layer times (the runtime's profiler; C engine: timers "
                                                "in the kernels, and instruction counts with --device qemu).")
@click.option("--device", default=None, help="Where to run: here (default), qemu (C engine: its RISC-V build in "
                                             "qemu-user), or ssh://[user@]host[:port][?python=PATH] (or a host alias "
                                             "of your ssh config).")
@click.option("--chart", type=click.Path(path_type=Path), default=None, help="Write a PNG of time per layer.")
@click.option("--top", default=15, show_default=True, type=click.IntRange(min=1), help="Layers in the table.")
@click.option("--json", "as_json", is_flag=True)
def profile_command(engines, runs, threads, per_layer, device, chart, top, as_json):
    """Measure ENGINE's latency (batch 1; a dynamic sequence length at 128); with two engines A B,
    run them alternately in one process and give B's time over A's with its noise."""
    from .profile.engine import profile_engines, table
    from .profile.profiler import Settings

    try:
        if len(engines) > 2:
            raise CompressError("profile takes one engine, or two to compare (A B)")
        settings = Settings(runs=runs, warmup=min(20, runs), threads=threads,
                            per_layer_runs=min(runs, 50) if per_layer or chart else 0)
        result = profile_engines(list(engines), settings, device)
        if chart:
            from .profile.charts import layer_chart

            last = result["engines"][-1]
            layer_chart(last["layers"], chart, f"{last['engine']}: ms per layer on {result['device']}")
    except CompressError as e:
        _fail(e, False)
    click.echo(json.dumps(result, indent=2) if as_json else table(result, top))


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--model-class", default=None)
@click.option("--model-args", default="{}")
@click.option("--allow-pickle", is_flag=True)
@click.option("--input-shape", default=None)
@click.option("--debug", is_flag=True)
def inspect_command(model, model_class, model_args, allow_pickle, input_shape, debug):
    """Show how MODEL loads: format, inputs, task, parameters."""
    from .model_io import LoadOptions, load_model, parse_input_shapes

    try:
        load = LoadOptions(model_class=model_class, model_args=json.loads(model_args), allow_pickle=allow_pickle,
                           input_shapes=parse_input_shapes(input_shape) if input_shape else None)
        artifact = load_model(model, load)
    except CompressError as e:
        _fail(e, debug)
    except json.JSONDecodeError as e:
        _fail(CompressError(f"--model-args is not valid JSON: {e}"), debug)
    params = sum(p.numel() for p in artifact.module.parameters())
    click.echo(f"format:     {artifact.meta['format']}")
    for t in artifact.spec.inputs:
        click.echo(f"input:      {t.name} {'x'.join(map(str, t.shape))} {t.dtype}")
    if artifact.spec.static_batch:
        click.echo(f"batch:      static {artifact.spec.static_batch}")
    click.echo(f"task:       {artifact.spec.task}")
    click.echo(f"parameters: {params:,}")
    click.echo(f"sha256:     {artifact.meta['source_sha256']}")


if __name__ == "__main__":
    main()
