"""The fxopt command: analyse, optimize, draw and benchmark a model from the shell.

    fxopt analyze torchvision:resnet50
    fxopt optimize torchvision:resnet50 --target cpu --prune 0.5 --out model.pt2 --report report.html
    fxopt viz hf:gpt2 -o graph.svg
    fxopt bench timm:convnext_tiny

MODEL is a built-in name (see: fxopt list) or package.module:factory / file.py:factory, whose factory returns a
module or a (module, example_inputs) pair. Built-in models use their natural input (1x3x224x224 for ImageNet
models); --input SHAPE sets another. Errors print one line and exit non-zero: 2 for bad arguments, 1 when the
work itself fails (a model that cannot be captured, a pass that fails).
"""

from __future__ import annotations

import argparse
import contextlib
import io as io_module
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """An error to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``fxopt viz: error: ...``) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as a single line and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """Stage-by-stage progress on stderr: a tqdm bar on terminals, nothing when quiet or piped."""

    def __init__(self, stages: Sequence[str], quiet: bool, stream: TextIO | None = None) -> None:
        self._bar: Any = None
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional: without it there is simply no bar
            return
        out = stream or sys.stderr
        self._bar = tqdm(total=len(stages), file=out, disable=not getattr(out, "isatty", lambda: False)(), leave=False,
                         ncols=80,
                         bar_format="{desc:<28} {bar} {n_fmt}/{total_fmt} [{elapsed}]")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Show ``name`` while the block runs, then advance the bar."""
        if self._bar is not None:
            self._bar.set_description_str(name)
        yield
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()


N = TypeVar("N", int, float)


def _number(text: str, convert: Callable[[str], N], valid: Callable[[N], bool], not_a_number: str,
            out_of_range: str) -> N:
    """``convert(text)`` when ``valid``; else an argparse error: ``not_a_number`` or ``out_of_range``, and the value."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{not_a_number}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{out_of_range}, got {value:g}")
    return value


def _ratio(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v < 1.0, "pruning ratio must be a number in [0, 1)",
                   "pruning ratio must be in [0, 1)")


def _error(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "error budget must be a positive number", "error budget must be > 0")


def _substitute(args: argparse.Namespace) -> Any:
    """The ``substitute`` option of optimize(): the structure, with the error budget when one was given."""
    from fxopt.errors import FxoptError

    if args.substitute is None:
        if args.max_error is not None:
            raise FxoptError("--max-error is the substitution's error budget: give --substitute too")
        return None
    return args.substitute if args.max_error is None else {"structure": args.substitute, "max_error": args.max_error}


def _target(text: str) -> str:
    from fxopt.errors import FxoptError
    from fxopt.targets.registry import get_target

    try:
        get_target(text)
    except FxoptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "expected a positive integer", "expected a positive integer")


def _out(io: dict[str, TextIO], text: str = "") -> None:
    io["out"].write(text + "\n")


def output_path(text: str, what: str) -> Path:
    """Check that ``text`` can be written as ``what`` and create its missing parent directories.

    Every command checks its output paths this way before doing any work.

    Raises:
        CliError: (exit 2) a path that is a directory, or whose directory cannot be created or written.
    """
    path = Path(text)
    if path.is_dir():
        raise CliError(f"{what} {text!r} is a directory; give a file name", EXIT_USAGE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the directory of {what} {text!r}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not os.access(path.parent, os.W_OK):
        raise CliError(f"cannot write {what} {text!r}: {path.parent} is not writable", EXIT_USAGE)
    return path


def _resolve(args: argparse.Namespace, progress: Progress, io: dict[str, TextIO]) -> Any:
    from fxopt.models import describe_inputs, resolve

    with progress.stage(f"build {args.model}"):
        model = resolve(args.model, args.input)
    _out(io, f"{model.name}: example input {describe_inputs(model.inputs)}"
             + ("" if args.input else " (--input SHAPE to change)"))
    return model


def _analyze(model: Any, args: argparse.Namespace, progress: Progress) -> Any:
    import fxopt

    with progress.stage("trace + analyse"):
        return fxopt.analyze(model.model, model.inputs, frontend=args.frontend)


# ----------------------------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace, io: dict[str, TextIO]) -> int:
    """List the built-in models."""
    from fxopt.models import zoo_names

    for name in zoo_names():
        if args.family is None or name.startswith(args.family + ":"):
            _out(io, name)
    return 0


def cmd_analyze(args: argparse.Namespace, io: dict[str, TextIO]) -> int:
    """Trace a model, find its groups and print them."""
    json_path = output_path(args.json, "--json") if args.json else None
    progress = Progress(["build", "analyse"], args.quiet, io["err"])
    model = _resolve(args, progress, io)
    analysis = _analyze(model, args, progress)
    progress.close()
    info = analysis.gm.meta["fxopt"]["trace"]
    _out(io, f"{model.name}: captured with {info.frontend}, {len(analysis.gm.graph.nodes)} nodes")
    _out(io, analysis.summary())
    rows = [(g.id, str(g.size), g.granularity, "exact" if g.exact else f"approx.: {g.reason}") for g in analysis.groups]
    if rows:
        _out(io)
        _table(io, ("group", "units", "unit", "exactness"), rows[: args.limit])
        if len(rows) > args.limit:
            _out(io, f"... and {len(rows) - args.limit} more groups (--limit N shows more)")
    if analysis.frozen:
        _out(io)
        _table(io, ("frozen group", "units", "frozen by", "reason"),
               [(f.id, str(f.size), f.node or "", f.reason) for f in analysis.frozen[: args.limit]])
    if json_path is not None:
        data = {
            "model": model.name,
            "frontend": info.frontend,
            "groups": [{"id": g.id, "size": g.size, "width": g.width, "granularity": g.granularity,
                        "exact": g.exact, "reason": g.reason,
                        "members": [[m.qualname, m.dim, m.role] for m in g.members]} for g in analysis.groups],
            "frozen": [{"id": f.id, "size": f.size, "reason": f.reason, "node": f.node} for f in analysis.frozen],
            "barriers": [{"node": b.node.name, "op": b.op, "reason": b.reason, "hint": b.hint}
                         for b in analysis.barriers],
        }
        json_path.write_text(json.dumps(data, indent=1))
        _out(io, f"wrote {json_path}")
    return 0


def cmd_viz(args: argparse.Namespace, io: dict[str, TextIO]) -> int:
    """Draw a model's graph with its groups."""
    from fxopt.viz import visualize
    from fxopt.viz.render import format_of

    try:
        format_of(Path(args.output), args.format)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    output_path(args.output, "-o")
    progress = Progress(["build", "analyse", "render"], args.quiet, io["err"])
    model = _resolve(args, progress, io)
    analysis = _analyze(model, args, progress)
    collapse: Any = {"auto": "auto", "yes": True, "no": False}[args.collapse]
    with progress.stage("render"):
        picture = visualize(analysis, args.output, collapse=collapse, show_params=args.show_params,
                            title=f"{model.name}: {type(model.model).__name__}", fmt=args.format,
                            rankdir=args.rankdir)
    progress.close()
    if not picture.rendered:
        io["err"].write(f"fxopt viz: warning: {picture.message}\n")
        return 0
    _out(io, f"wrote {picture.path} ({len(picture.graph.nodes)} nodes, {len(analysis.groups)} groups)")
    return 0


def _optimize(args: argparse.Namespace, model: Any, progress: Progress) -> Any:
    from fxopt.api import optimize

    with progress.stage(f"optimize for {args.target}"):
        return optimize(model.model, model.inputs, target=args.target, prune=args.prune,
                        substitute=_substitute(args), compile=args.compile, verbose=args.verbose or args.debug)


def cmd_optimize(args: argparse.Namespace, io: dict[str, TextIO]) -> int:
    """Optimize a model for a target, save it, time it and write the report."""
    from fxopt.api import measure, report
    from fxopt.serialization import accepted_inputs, save
    from fxopt.viz.html import write_report

    out = output_path(args.out, "--out") if args.out else None
    html = output_path(args.report, "--report") if args.report else None
    progress = Progress(["build", "optimize", "save", "time", "report"], args.quiet, io["err"])
    model = _resolve(args, progress, io)
    fast = _optimize(args, model, progress)
    if out is not None:
        with progress.stage("save"):
            save(fast, out, model.inputs)
    if not args.no_measure:
        with progress.stage("time original and optimized"):
            measure(model.model, fast, model.inputs, rounds=args.rounds)
    if html is not None:
        with progress.stage("report"):
            write_report(fast, html, original=model.model, inputs=model.inputs, title=f"fxopt report: {model.name}",
                         graph=not args.no_graph, measure=not args.no_measure)
    progress.close()
    _out(io, report(fast).to_text())
    if out is not None:
        _out(io, f"wrote {out}: load it with fxopt.load({str(out)!r}); it accepts "
                 + "; ".join(accepted_inputs(out)))
    if html is not None:
        _out(io, f"wrote {html}")
    return 0


def cmd_bench(args: argparse.Namespace, io: dict[str, TextIO]) -> int:
    """Time the model before and after optimization, side by side."""
    import torch

    from fxopt.api import measure

    progress = Progress(["build", "optimize", "time"], args.quiet, io["err"])
    with _threads(args.threads):
        model = _resolve(args, progress, io)
        fast = _optimize(args, model, progress)
        with progress.stage("time original and optimized"):
            report = measure(model.model, fast, model.inputs, rounds=args.rounds)
        threads = torch.get_num_threads()
    progress.close()
    m = report.measured
    assert m is not None  # measure() attaches it
    rows = [(label, f"{t.median_ms:.3f}", f"±{50 * t.spread:.1f}%", f"{pred * 1e3:.3f}", f"{n / 1e6:.3g}M",
             f"{m.ratio('original', t.label):.3f}x")
            for label, t, pred, n in zip(("original", "optimized"), m.timings,
                                         (report.before.predicted_s, report.after.predicted_s),
                                         (report.before.params, report.after.params), strict=True)]
    _out(io, f"{model.name} on {args.target} ({threads} threads; "
             f"{'compiled' if report.lowered else 'not compiled'} after {report.pipeline})")
    _out(io, f"measured: {m.method()}")
    _table(io, ("model", "median ms", "spread", "predicted ms", "params", "time ratio"), rows)
    for w in (*m.warnings, *report.warnings):
        _out(io, f"warning: {w}")
    return 0


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` (unchanged for None) inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _table(io: dict[str, TextIO], head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    widths[-1] = min(widths[-1], 80)
    for r in [head, ["-" * w for w in widths], *rows]:
        _out(io, "  ".join(str(c)[:80].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ----------------------------------------------------------------------------------------------- parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="built-in name (torchvision:resnet50, timm:convnext_tiny, hf:gpt2; see `fxopt list`) "
                        "or package.module:factory / file.py:factory")
    p.add_argument("--input", action="append", metavar="SHAPE",
                   help="example input shape, e.g. 1x3x224x224 or 1x16:int64 (repeat for several inputs); "
                        "overrides the model's own example inputs")
    p.add_argument("--frontend", choices=("auto", "fx", "export"), default="auto",
                   help="graph capture: torch.fx symbolic tracing, torch.export, or fx with export as fallback")


def _optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=_target, default="cpu",
                   help="hardware target: cpu, a100, h100, h200 (default: cpu)")
    p.add_argument("--prune", type=_ratio, default=None, metavar="RATIO",
                   help="remove this share of every prunable group's units, in [0, 1) (default: no pruning)")
    p.add_argument("--substitute", choices=("lowrank", "blockdiag", "monarch", "btt", "blast", "auto"),
                   help="replace linears and 1x1 convs by this structured layer where it is accurate enough and "
                        "faster on the target; auto: the fastest per layer (default: no substitution)")
    p.add_argument("--max-error", type=_error, default=None, metavar="ERROR",
                   help="with --substitute: each layer's largest relative error (default: 0.1)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip lowering with torch.compile")


def _command(sub: argparse._SubParsersAction[Parser], common: Parser, name: str, func: Callable[..., int], summary: str,
             description: str, model: bool = True) -> argparse.ArgumentParser:
    """A sub-command running ``func``, with the common options and (unless ``model=False``) the MODEL arguments."""
    p = sub.add_parser(name, parents=[common], help=summary, description=description)
    p.set_defaults(func=func)
    if model:
        _model_args(p)
    return p


def _rounds_arg(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--rounds", type=_positive, default=default,
                   help=f"timing rounds, original and optimized interleaved (default: {default})")


def build_parser() -> Parser:
    """The argument parser of the ``fxopt`` command (every sub-command has ``--help``)."""
    parser = Parser(prog="fxopt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fxopt {_version()}")
    common = Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log what fxopt does (passes, files) and let torch.compile print its progress")
    common.add_argument("--debug", action="store_true", help="debug logging and full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = _command(sub, common, "analyze", cmd_analyze, "find a model's channel groups and frozen dims",
                 "Trace MODEL, find its zero-invariant channel groups, and print them with the frozen groups and "
                 "the nodes that have no channel rule.")
    p.add_argument("--limit", type=_positive, default=40, help="rows per table (default: 40)")
    p.add_argument("--json", metavar="PATH", help="also write the groups as JSON")

    p = _command(sub, common, "optimize", cmd_optimize, "optimize a model; save it and write a report",
                 "Run fxopt's pipeline for a target on MODEL (lossless unless --prune is given), save the result "
                 "and write an HTML report.")
    _optimize_args(p)
    p.add_argument("--out", metavar="PATH", help="save the optimized model (e.g. model.pt2); load it with "
                                                 "fxopt.load(PATH)")
    p.add_argument("--report", metavar="PATH", help="write the HTML report (e.g. report.html)")
    p.add_argument("--no-graph", action="store_true", help="leave the graph picture out of the report")
    p.add_argument("--no-measure", action="store_true", help="do not time the original and optimized models")
    _rounds_arg(p, 10)

    p = _command(sub, common, "viz", cmd_viz, "draw a model's graph with its groups coloured",
                 "Draw MODEL's graph: nodes with op and shapes, clusters by module, each group in a stable colour, "
                 "frozen dims marked. Needs Graphviz's `dot` for SVG/PNG/PDF; without it the .dot text is written.")
    p.add_argument("-o", "--output", default="graph.svg", metavar="PATH",
                   help="output file; .svg, .png, .pdf or .dot (default: graph.svg)")
    p.add_argument("--format", choices=("svg", "png", "pdf", "dot"), help="override the suffix")
    p.add_argument("--collapse", choices=("auto", "yes", "no"), default="auto",
                   help="draw repeated blocks as one box each (auto: above 250 nodes)")
    p.add_argument("--show-params", action="store_true", help="draw parameter nodes of exported graphs")
    p.add_argument("--rankdir", choices=("TB", "LR"), default="TB", help="layout direction (default: TB)")

    p = _command(sub, common, "bench", cmd_bench, "time a model before and after optimization",
                 "Optimize MODEL and time the original and the optimized forward pass side by side, in "
                 "interleaved rounds (median and spread; a warning when the machine is too busy for the figures "
                 "to hold), beside the latency fxopt predicts.")
    _optimize_args(p)
    _rounds_arg(p, 15)
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")

    p = _command(sub, common, "list", cmd_list, "list the built-in models",
                 "List the built-in model names MODEL accepts.", model=False)
    p.add_argument("--family", choices=("torchvision", "timm", "hf"), help="only this family")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fxopt")
    except PackageNotFoundError:
        return "unknown"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return (text[:400] + " …") if len(text) > 400 else text or type(exc).__name__


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the ``fxopt`` command line; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        stdout: where results go (default: ``sys.stdout``).
        stderr: where errors and warnings go (default: ``sys.stderr``).

    Example:
        >>> main(["analyze", "torchvision:resnet18", "--quiet"])
        0
    """
    io = {"out": stdout or sys.stdout, "err": stderr or sys.stderr}
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return int(exc.code or 0)
    handler = logging.StreamHandler(io["err"])
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("fxopt")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore")
            code = _run(args, io)
        io["out"].flush()
        return code
    except BrokenPipeError:  # the reader went away (fxopt list | head): stop quietly, as other tools do
        _drop_stdout(io["out"])
        return EXIT_FAILURE
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _drop_stdout(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so that Python's flush at exit finds no broken pipe."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io_module.UnsupportedOperation):  # an in-memory stream: nothing to detach
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _run(args: argparse.Namespace, io: dict[str, TextIO]) -> int:
    """Run the chosen command; every failure becomes one line on stderr and an exit status."""
    from fxopt.errors import FxoptError

    prog = f"fxopt {args.command}"
    try:
        if args.debug:
            return int(args.func(args, io))
        from fxopt.passes.lower import quiet_torch_logs

        # torch's own warnings (symbolic shapes, export diagnostics) and the partial graphs it prints on export
        # errors stay off the terminal; --debug shows them
        with quiet_torch_logs(), contextlib.redirect_stderr(io_module.StringIO()):
            return int(args.func(args, io))
    except BrokenPipeError:
        raise  # main() stops quietly
    except CliError as exc:
        io["err"].write(f"{prog}: error: {_one_line(exc)}\n")
        return exc.code
    except FxoptError as exc:
        if args.debug:
            traceback.print_exc(file=io["err"])
        code = EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE
        io["err"].write(f"{prog}: error: {_one_line(exc)}\n")
        return code
    except KeyboardInterrupt:
        io["err"].write(f"{prog}: interrupted\n")
        return 130
    except Exception as exc:  # anything unexpected: one line, the traceback only with --debug
        if args.debug:
            traceback.print_exc(file=io["err"])
        io["err"].write(f"{prog}: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
                        "traceback)\n")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
