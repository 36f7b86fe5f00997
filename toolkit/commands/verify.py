"""`mnisttk verify`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from toolkit.clikit import (
    GATES,
    VERIFY,
    check_outputs,
    data_dir_option,
    emit_json,
    export_files,
    gate_options,
    json_option,
    json_to_stdout,
    log,
    merge_old_spellings,
    old_spelling,
    quiet_option,
    toolkit_errors,
)
from toolkit.config import Gates, VerifyConfig
from toolkit.errors import ToolkitError
from toolkit.runtimes import RUNTIMES
from toolkit.targets import KNOWN_TARGETS


@click.command(short_help='Prove every artifact matches the float model: gates, evidence, exit code.')
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("exported"),
              show_default=True, help="Folder with manifest.json and the artifacts.")
@data_dir_option
@click.option("--device", "devices", multiple=True, type=click.Choice(["cpu", "cuda"]),
              help="ONNX Runtime rows to run (repeatable; default both: cpu, cuda — cuda rows skip without a GPU).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch rows; the reference comes from reference.npz.")
@click.option("--skip-runtime", "skip_runtimes", multiple=True, type=click.Choice([s.id for s in RUNTIMES]),
              envvar="MNISTTK_SKIP_RUNTIME", show_envvar=True,
              help="Leave this runtime's rows out (repeatable), e.g. openvino: they are listed as skipped. "
                   "From the environment: space-separated ids.")
@click.option("--require-cuda", is_flag=True, help="Fail when the CUDA rows cannot run.")
@click.option("--threads", type=click.IntRange(0, os.cpu_count() or 1), default=VERIFY.threads, show_default=True,
              help="CPU threads for every runtime (0: all cores; at most this machine's cores); ONNX Runtime runs a "
                   "batch as one single-threaded session per thread.")
@click.option("--expect", "expect", multiple=True, type=click.Choice(KNOWN_TARGETS), metavar="TARGET",
              help="A target the export must hold and this run must check (repeatable), e.g. --expect onnx-int8: "
                   f"fail if it is missing or its row was skipped. One of: {', '.join(KNOWN_TARGETS)}.")
@click.option("--row-timeout", type=click.FloatRange(min=0, min_open=True), default=VERIFY.row_timeout_s,
              show_default=True, help="Seconds one row may take; a row over it (a hung runtime) is a FAIL row.")
@click.option("--row-memory", type=click.IntRange(min=64), default=VERIFY.row_memory_mb, show_default=True,
              help="MB one CPU row may allocate; a row over it is a FAIL row.")
@click.option("--throughput-batch", "batch_size", type=click.IntRange(1, 10_000), default=VERIFY.throughput_batch,
              show_default=True, help="Batch for the throughput measurement.")
@click.option("--max-latency-ratio", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fail rows whose batch-1 p50 exceeds this multiple of the reference row's.")
@click.option("--rounds", type=click.IntRange(1, 50), default=VERIFY.rounds, show_default=True,
              help="Timing rounds: every row timed once per round, rows interleaved; latency and throughput are "
                   "medians over the rounds, with their min-max spread (more rounds: steadier figures, longer run).")
@click.option("--isa-cap", type=click.Choice(["avx2"]), default=None,
              help="Run the rows whose int8 kernels honour an instruction-set cap (oneDNN: OpenVINO) as on an "
                   "AVX2-only CPU (ONEDNN_MAX_CPU_ISA), to check that CPU's arithmetic on a VNNI or AMX machine; each "
                   "row says whether the cap reached it.")
@gate_options
@json_option("The full report")
@click.option("--wide", is_flag=True, help="Every column and unwrapped notes (default: fits 120 columns).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The table as Markdown, into FILE (- for stdout; the text table then goes to stderr).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The report as one self-contained page: verdict, table, plot, notes, the changed test images.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG of accuracy vs batch-1 latency (needs matplotlib).")
@click.option("--save-outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Every row's per-image logits, with the artifact and test-set SHA-256, into FILE (JSON, about "
                   "0.4 MB a row): for `mnisttk compare` or another machine's `verify --golden`.")
@click.option("--golden", "golden_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also judge each row against the same artifact's outputs saved by another run (`--save-outputs` "
                   "on the host): flips and logit drift image by image, with the same gates.")
@click.option("--cluster", "cluster", default=None, metavar="ADDRESS",
              help="Run the whole verify on every node of a Ray cluster (HOST:PORT, auto: RAY_ADDRESS, local: a private "
                   "one on this machine's loopback) and report per node kind; needs mnisttk[cluster].")
@click.option("--nodes", "node_selector", default=None, metavar="SELECTOR",
              help="With --cluster: the nodes to run on (default all): arch=aarch64, flag=avx512_vnni, "
                   "label:KEY=VALUE, node=ID-PREFIX; comma-separated, every term to hold.")
@quiet_option
@old_spelling("--batch-size", "batch_size", type=click.IntRange(1, 10_000))
@old_spelling("--runtime", "runtimes", multiple=True, type=click.Choice(["torch", "cpu", "cuda"]))
@click.pass_context
@toolkit_errors
@merge_old_spellings
def verify(ctx, folder, data_dir, devices, no_torch, skip_runtimes, require_cuda, threads, batch_size, max_latency_ratio, fp32_atol,
           int8_max_drop, int8_min_agreement, json_out, md_path, plot_path, expect=(), wide=False, runtimes=(),
           row_timeout=VERIFY.row_timeout_s, row_memory=VERIFY.row_memory_mb,
           int8_max_clipped=GATES.int8_max_clipped_top_pct, outputs_path=None, golden_path=None, rounds=VERIFY.rounds,
           int8_min_ood_agreement=GATES.int8_min_ood_agreement_pct, html_path=None, isa_cap=None, cluster=None,
           node_selector=None):
    """Check every exported artifact against the float model on the full test set:
    accuracy, agreement, logit drift, latency, throughput, providers used. Exit 0 when
    every gate holds, 1 when any fails (the rows named), 2 on usage errors.

    \b
    Example:
        mnisttk verify --markdown report.md --plot report.png
        mnisttk verify --no-torch --golden host-outputs.json --save-outputs device-outputs.json
    """
    from toolkit.data import load_mnist
    from toolkit.report import format_markdown, format_table, write_plot
    from toolkit.verify import run_verify

    runtimes = tuple(runtimes) or ("torch", *(devices or ("cpu", "cuda")))
    if no_torch:
        runtimes = tuple(r for r in runtimes if r != "torch")
    if require_cuda and "cuda" not in runtimes:
        raise click.UsageError("--require-cuda needs the cuda runtime")
    gates = Gates(fp32_max_abs_logit_diff=fp32_atol, int8_max_drop_points=int8_max_drop,
                  int8_min_agreement_pct=int8_min_agreement, max_latency_ratio=max_latency_ratio,
                  int8_max_clipped_top_pct=int8_max_clipped, int8_min_ood_agreement_pct=int8_min_ood_agreement)
    config = VerifyConfig(folder=folder, runtimes=runtimes, skip_runtimes=tuple(skip_runtimes), require_cuda=require_cuda,
                          threads=threads,
                          throughput_batch=batch_size, gates=gates, expect=tuple(expect), row_timeout_s=row_timeout,
                          row_memory_mb=row_memory, rounds=rounds, isa_cap=isa_cap)
    from toolkit.manifest import load_manifest

    manifest = load_manifest(folder)  # no or bad manifest: say so before loading any data
    if node_selector and not cluster:
        raise click.UsageError("--nodes selects nodes of a --cluster")
    if cluster:
        _fleet(ctx, config, manifest, cluster, node_selector, data_dir, json_out, md_path,
               {"--plot": plot_path, "--save-outputs": outputs_path, "--golden": golden_path}, wide, html_path)
        return
    if require_cuda:
        from toolkit.runtimes.ort_session import available_providers

        if "CUDAExecutionProvider" not in available_providers():
            raise ToolkitError("--require-cuda: this onnxruntime has no CUDAExecutionProvider (`make gpu` on a CUDA "
                               "machine; `mnisttk env` shows what is here); nothing was run")
    if plot_path:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ToolkitError("--plot needs matplotlib (pip install 'mnisttk[plot]'); nothing was run")
    md_to_stdout = md_path is not None and str(md_path) == "-"
    if md_to_stdout and json_to_stdout(json_out):
        raise click.UsageError("--json and --markdown cannot both go to stdout")
    # an unwritable report path, or one that would overwrite what is verified, fails before the run
    check_outputs([("--json", json_out, "json"), ("--markdown", md_path, "markdown"), ("--plot", plot_path, "png"),
                   ("--save-outputs", outputs_path, "json"), ("--html", html_path, "html")],
                  export_files(folder, manifest) + ([golden_path] if golden_path else []))
    from toolkit import outputs as saved_outputs

    golden = saved_outputs.load(golden_path) if golden_path else None
    from toolkit.manifest import manifest_spec

    spec = manifest_spec(manifest)
    mnist = load_mnist(data_dir, log=log, size=(spec.height, spec.width))  # image folders: the models' size
    logits: dict | None = {} if outputs_path else None
    judged: dict = {}
    result = run_verify(config, mnist.test_images, mnist.test_labels, mnist.sha256["test"], log=log, golden=golden,
                        outputs=logits, judged=judged)
    from toolkit.safetext import shown_tree

    view = shown_tree(result)  # what a person sees: every string from a file escaped (toolkit.safetext)
    click.echo(format_table(view, wide=wide), err=json_to_stdout(json_out) or md_to_stdout)
    from toolkit.fsutil import atomic_write_bytes

    try:
        emit_json(result, json_out)
        if outputs_path and logits is not None:
            shas = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
            shas[manifest["reference"]["file"]] = manifest["reference"]["sha256"]
            doc = saved_outputs.build(result, logits, mnist.test_labels, mnist.sha256["test"], shas)
            atomic_write_bytes(outputs_path, saved_outputs.dumps(doc))
            log(f"outputs of {len(logits)} rows: {outputs_path} ({outputs_path.stat().st_size:,} bytes)")
        if md_to_stdout:
            click.echo(format_markdown(view), nl=False)
        elif md_path:
            atomic_write_bytes(md_path, format_markdown(view).encode())
    except OSError as exc:
        raise ToolkitError(f"cannot write report: {exc}") from None
    if plot_path:
        try:
            write_plot(view, plot_path)
        except OSError as exc:
            raise ToolkitError(f"cannot write plot {plot_path}: {exc.strerror or exc}") from None
    if html_path:
        from toolkit.html_report import write_html

        try:  # the reference the rows were judged against (the folder is not read a second time)
            write_html(view, mnist.test_images, mnist.test_labels, judged["reference_predictions"], html_path)
        except OSError as exc:
            raise ToolkitError(f"cannot write {html_path}: {exc.strerror or exc}") from None
    ctx.exit(0 if result["passed"] else 1)


def _fleet(ctx, config, manifest, cluster: str, selector, data_dir, json_out, md_path, unsupported: dict,
           wide: bool, html_path) -> None:
    """verify --cluster: the same verify on every selected node of a Ray cluster (toolkit.cluster), one
    report per node kind and the nodes compared image by image."""
    given = [name for name, value in unsupported.items() if value]
    if given:
        raise click.UsageError(f"{given[0]} is not available with --cluster (each node's outputs are compared in the "
                               "fleet report; --json holds them all)")
    from toolkit.cluster import run_fleet
    from toolkit.data import load_mnist
    from toolkit.fleet_report import format_fleet, format_markdown
    from toolkit.manifest import manifest_spec

    check_outputs([("--json", json_out, "json"), ("--markdown", md_path, "markdown"), ("--html", html_path, "html")],
                  export_files(config.folder, manifest))
    spec = manifest_spec(manifest)
    mnist = load_mnist(data_dir, log=log, size=(spec.height, spec.width))
    fleet = run_fleet(config, cluster, selector, mnist.test_images, mnist.test_labels, mnist.sha256["test"], log=log)
    from toolkit.safetext import shown_tree

    view = shown_tree(fleet)
    click.echo(format_fleet(view, wide=wide), err=json_to_stdout(json_out))
    emit_json(fleet, json_out)
    from toolkit.fsutil import atomic_write_bytes

    try:
        if md_path:
            atomic_write_bytes(md_path, format_markdown(view).encode())
        if html_path:
            from toolkit.html_report import render_fleet
            from toolkit.manifest import confined_path
            from toolkit.reference import read_reference

            ref = read_reference(confined_path(config.folder, manifest["reference"]["file"]), len(mnist.test_labels),
                                 len(manifest.get("classes") or range(10)))
            atomic_write_bytes(html_path, render_fleet(view, mnist.test_images, mnist.test_labels,
                                                       ref["logits"].argmax(1)).encode("utf-8"))
    except OSError as exc:
        raise ToolkitError(f"cannot write report: {exc}") from None
    ctx.exit(0 if fleet["passed"] else 1)
