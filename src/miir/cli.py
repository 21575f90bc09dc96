"""The ``miir`` command line. Entry points only parse input and call the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from miir.atomic import atomic_json
from miir.errors import MiirError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MIIR: sequential recommendation as missing information imputation.",
)


@app.callback()
def _root() -> None:
    """MIIR: sequential recommendation as missing information imputation."""
    from miir.runtime import skip_unused_imports

    skip_unused_imports()  # before any command imports Lightning (MIIR_LEAN_IMPORTS=0: off)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _parse_overrides(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, kind = pair.partition("=")
        if not sep or not name or not kind:
            raise typer.BadParameter(f"expected NAME=KIND, got {pair!r}", param_hint="--field")
        out[name] = kind
    return out


@app.command()
def prepare(
    source: Annotated[
        Path, typer.Argument(help="Source folder (or schema file for the generic format).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="auto, sequences, amazon2014, amazon2018, generic, movielens, recbole.",
        ),
    ] = "auto",
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field", help="Override a field kind: NAME=KIND (KIND 'drop' removes it). Repeatable."
        ),
    ] = None,
    schema_file: Annotated[
        Path | None,
        typer.Option(
            "--schema", help="Schema file (TOML/JSON) declaring the side fields and kinds."
        ),
    ] = None,
    discard: Annotated[
        float,
        typer.Option(
            help="Hide each present side value with this probability (paper's 'D' setting: 0.5)."
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 42,
    max_len: Annotated[int, typer.Option(help="Maximum sequence length models see.")] = 20,
    min_user: Annotated[int, typer.Option(help="Drop users with fewer interactions.")] = 5,
    item_core: Annotated[int, typer.Option(help="Item k-core (0: off).")] = 0,
    dedupe: Annotated[str, typer.Option(help="none, consecutive or first.")] = "none",
    negatives: Annotated[
        int, typer.Option(help="Negatives per user for validation and test.")
    ] = 99,
    negatives_exclude: Annotated[
        str, typer.Option(help="history (S3-Rec convention) or target (MIIR authors' code).")
    ] = "history",
    text: Annotated[
        bool,
        typer.Option(
            "--text/--no-text", help="Encode text fields (off: text fields are left out)."
        ),
    ] = True,
    text_model: Annotated[
        str | None,
        typer.Option(
            help="Local sentence-transformers model path (default: packaged all-MiniLM-L6-v2)."
        ),
    ] = None,
    text_batch_size: Annotated[int, typer.Option(help="Texts per encoding batch.")] = 256,
    dedupe_meta: Annotated[
        bool, typer.Option(help="Amazon 2018: keep the first of repeated metadata records.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Read raw data, filter, split, draw negatives, discard, encode text, and write an artifact."""
    from pydantic import ValidationError

    from miir.data.prepare import PrepareConfig, summary_table
    from miir.data.prepare import prepare as run_prepare
    from miir.data.readers import read_source
    from miir.data.schema import load_schema_file, schema_from_mapping

    try:
        config = PrepareConfig(
            min_user_interactions=min_user,
            item_core=item_core,
            dedupe=dedupe,
            max_len=max_len,
            n_negatives=negatives,
            negatives_exclude=negatives_exclude,
            discard=discard,
            seed=seed,
            encode_text=text,
            text_model=text_model,
            text_batch_size=text_batch_size,
        )
    except ValidationError as exc:
        from miir.models import describe_validation_error

        _fail(MiirError(describe_validation_error(exc, PrepareConfig, "prepare")))
    try:
        schema = (
            schema_from_mapping(load_schema_file(schema_file), file=schema_file)
            if schema_file
            else None
        )
        raw = read_source(
            source,
            fmt,
            schema=schema,
            overrides=_parse_overrides(field or []),
            dedupe_meta=dedupe_meta,
        )
        manifest = run_prepare(raw, out, config, overwrite=overwrite, progress=not quiet)
    except MiirError as exc:
        _fail(exc)
    typer.echo(summary_table(manifest))
    typer.echo(f"\nartifact written to {out}")


def _load_config_file(path: Path | None) -> dict:
    if path is None:
        return {}
    from miir.data.schema import load_schema_file

    data = load_schema_file(path)  # TOML or JSON reader with errors naming the file
    unknown = set(data) - {"model", "train"}
    if unknown:
        raise MiirError(
            f"{path}: unknown section(s) {sorted(unknown)}; allowed sections: model, train"
        )
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise MiirError(f"{path}: '{section}' must be a table of options")
    return data


def _parse_value(text: str) -> object:
    """A --set value: JSON where it parses (numbers, true/false, lists, null), else a string."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_sets(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MiirError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = _parse_value(value)
    return out


def _model_names() -> str:
    from miir.models import REGISTRY

    return ", ".join(REGISTRY)


@app.command()
def train(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Artifact folder written by `miir prepare`.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Registered model: miir, miir-r, miir-f, miir-m, miir-r-m, sparse-miir, "
            "sparse-miir-r, and the baselines (`miir models` lists them).",
        ),
    ] = "miir",
    variant: Annotated[
        str | None, typer.Option(hidden=True, help="Old name of --model for MIIR variants.")
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            help="Settings preset under everything else: 'default' (the measured best recipe) "
            "or 'paper' (the MIIR paper's settings: lr 1e-4, dropout 0.5, 100 epochs)."
        ),
    ] = "default",
    config: Annotated[
        Path | None,
        typer.Option(
            help="Config file (TOML/JSON) with \\[model] and \\[train] tables; command-line "
            "options win over it."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A model option KEY=VALUE (repeatable), e.g. --set dropout=0.2 --set n_layers=2; "
            "`miir models --options NAME` lists a model's options.",
        ),
    ] = None,
    fields: Annotated[
        str | None, typer.Option(help="Comma-separated side fields to use (default: all).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience (epochs).")] = None,
    min_epochs: Annotated[
        int | None, typer.Option(help="Early stopping cannot stop before this epoch.")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Model dropout (--set dropout=).")] = None,
    mask_prob: Annotated[
        float | None, typer.Option(help="MII mask probability p (MIIR; default 0.3, paper: 0.5).")
    ] = None,
    item_mask_prob: Annotated[
        float | None,
        typer.Option(help="Extra whole-item masking probability in MII (default 0.2; authors: 0)."),
    ] = None,
    window_stride: Annotated[
        int | None, typer.Option(help="Training window stride (default: max_len).")
    ] = None,
    batching: Annotated[
        str | None,
        typer.Option(
            help="Training batches: packed (default: random windows packed into shared rows), "
            "buckets (windows of similar length) or random (padded).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto (default: bf16 only where the CPU/GPU runs it natively), 32-true or bf16."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (int or auto).")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (multi-node DDP).")] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ddp_spawn, ...")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    limit_train_batches: Annotated[
        int | None, typer.Option(help="Batches per epoch (smoke runs).")
    ] = None,
    limit_val_batches: Annotated[
        int | None, typer.Option(help="Validation batches (smoke runs).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Resume from the run folder's last Lightning checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing run folder (its contents are deleted).")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar.")
    ] = True,
) -> None:
    """Train a model on an artifact; the best checkpoint is evaluated on validation and test."""
    from miir.models import model_config
    from miir.training.train import train as run_train
    from miir.training.train import train_config

    try:
        from miir.presets import preset_overrides

        name = variant or model
        preset_model, preset_train = preset_overrides(preset, name)
        file_cfg = _load_config_file(config)
        where = f"{config} [model]" if config else None
        model_over = {**preset_model, **file_cfg.get("model", {})}
        if fields is not None:
            model_over["fields"] = tuple(f for f in fields.split(",") if f)
        for key, value in (
            ("item_mask_prob", item_mask_prob),
            ("dropout", dropout),
            ("mask_prob", mask_prob),
        ):
            if value is not None:
                model_over[key] = value
        model_over.update(_parse_sets(set_ or []))
        model_cfg = model_config(name, model_over, where)
        train_over = {**preset_train, **file_cfg.get("train", {})}
        cli = {
            "max_epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "patience": patience,
            "min_epochs": min_epochs,
            "window_stride": window_stride,
            "batching": batching,
            "precision": precision,
            "seed": seed,
            "accelerator": accelerator,
            "num_nodes": num_nodes,
            "strategy": strategy,
            "threads": threads,
            "limit_train_batches": limit_train_batches,
            "limit_val_batches": limit_val_batches,
            "devices": (int(devices) if devices and devices.isdigit() else devices),
        }
        train_over.update({k: v for k, v in cli.items() if v is not None})
        train_over["progress"] = progress
        train_cfg = train_config(train_over, f"{config} [train]" if config else "train")
    except MiirError as exc:
        _fail(exc)
    try:
        import shlex

        results = run_train(
            data,
            out,
            name,
            model_cfg,
            train_cfg,
            resume=resume,
            overwrite=overwrite,
            command=shlex.join(["miir", *sys.argv[1:]]),
        )
    except MiirError as exc:
        _fail(exc)
    if "test" in results:
        from miir.evaluation.report import metrics_table

        typer.echo(metrics_table(results))
    typer.echo(f"run written to {out}")


@app.command()
def models(
    options: Annotated[
        str | None, typer.Option("--options", help="List the options of this model.")
    ] = None,
) -> None:
    """List the registered models (or one model's options with their defaults)."""
    from miir.models import REGISTRY, get_entry

    if options is None:
        for entry in REGISTRY.values():
            preset = f"  preset {entry.preset}" if entry.preset else ""
            typer.echo(f"{entry.name:<16}{entry.description}{preset}")
        return
    try:
        entry = get_entry(options)
    except MiirError as exc:
        _fail(exc)
    defaults = entry.cls.Config().model_dump()
    defaults.update(entry.preset)
    fields = entry.cls.Config.model_fields
    shown = {key: repr(defaults[key]) for key in fields}
    name_w = max(map(len, fields)) + 2
    value_w = max(map(len, shown.values())) + 2
    for key, info in fields.items():
        typer.echo(f"{key:<{name_w}}{shown[key]:<{value_w}}{info.description or ''}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Option("--run", "-r", help="Run folder written by `miir train`.")],
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Artifact (default: the one the run was trained on)."),
    ] = None,
    stage: Annotated[
        list[str] | None, typer.Option(help="valid and/or test (repeatable; default both).")
    ] = None,
    imputation: Annotated[
        bool,
        typer.Option(
            "--imputation",
            help="Score the imputation of discard-hidden side values instead (Table 11; needs "
            "an artifact prepared with --discard); writes imputation.json.",
        ),
    ] = False,
    imputers: Annotated[
        str,
        typer.Option(help="With --imputation: reference rows, e.g. most-frequent,co-occurrence."),
    ] = "",
) -> None:
    """Evaluate a run's best checkpoint under both protocols (sampled 99 negatives, full ranking)."""
    from miir.data.artifact import Artifact
    from miir.evaluation.report import metrics_table
    from miir.training.train import evaluate_run

    try:
        artifact = Artifact(data) if data else None
        if imputation:
            from miir.evaluation.imputation import imputation_command

            typer.echo(imputation_command(run, artifact, imputers, tuple(stage or ("test",))))
            return
        stages = tuple(stage or ("valid", "test"))
        bad = [s for s in stages if s not in ("valid", "test")]
        if bad:
            raise typer.BadParameter(f"unknown stage(s) {bad}; use valid or test")
        results = evaluate_run(run, artifact=artifact, stages=stages)
    except MiirError as exc:
        _fail(exc)
    atomic_json(run / "evaluation.json", results)
    typer.echo(metrics_table(results))


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Run folder A.")],
    run_b: Annotated[Path, typer.Argument(help="Run folder B (same artifact).")],
    stage: Annotated[str, typer.Option(help="valid or test.")] = "test",
    metric: Annotated[
        list[str] | None,
        typer.Option(help="HR@k, NDCG@k or MRR (repeatable; default HR@10, NDCG@10, MRR)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the comparison to this JSON file.")
    ] = None,
) -> None:
    """Paired t-tests between two runs on the same users, under both protocols."""
    from miir.evaluation.compare import DEFAULT_METRICS, compare_runs
    from miir.evaluation.report import compare_table

    try:
        result = compare_runs(run_a, run_b, stage=stage, metrics=tuple(metric or DEFAULT_METRICS))
    except MiirError as exc:
        _fail(exc)
    if json_out is not None:
        atomic_json(json_out, result)
    typer.echo(compare_table(result))


@app.command()
def benchmark(
    grid: Annotated[
        Path, typer.Argument(help="Grid file (YAML): data sets, settings, models, seeds.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for tables and figures (default: bench/results/<grid name>).",
        ),
    ] = None,
    runs_root: Annotated[
        Path, typer.Option(help="Run folders, one per run key (a killed run resumes from its own).")
    ] = Path("runs/benchmark"),
    records: Annotated[
        list[Path] | None,
        typer.Option(
            help="Recorded runs: <key>.json and <key>.ranks.npz (repeatable: all are read, new "
            "records go to the first; default bench/results/runs)."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Train only these runs: model=NAME, label=LABEL, data=NAME, setting=NAME or seed=N "
            "(repeatable; values of one key: any, different keys: all; tables cover the grid)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="List the runs, which are recorded, and the estimated time.")
    ] = False,
    tables_only: Annotated[
        bool, typer.Option(help="Only rebuild the tables and figures from the recorded runs.")
    ] = False,
) -> None:
    """Train a grid of models over data sets, settings and seeds; write the paper's tables."""
    import shlex

    from miir.benchmark import run_benchmark

    try:
        run_benchmark(
            grid,
            out=out,
            runs_root=runs_root,
            records=records or [Path("bench/results/runs")],
            only=only or [],
            dry_run=dry_run,
            tables_only=tables_only,
            command=shlex.join(["miir", *sys.argv[1:]]),
            echo=typer.echo,
        )
    except MiirError as exc:
        _fail(exc)


@app.command()
def explain(
    run: Annotated[Path, typer.Option("--run", "-r", help="Run folder written by `miir train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG and Markdown.")],
    user: Annotated[
        str | None, typer.Option("--user", help="A user of the artifact: explain its test case.")
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option("--input", help="A JSON list of item ids (oldest first) to explain."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Artifact (default: the one the run was trained on)."),
    ] = None,
) -> None:
    """Attention heat maps (Fig. 5) and a case study of imputed values (Fig. 4) for one history."""
    from miir.explain import explain_run

    if (user is None) == (history is None):
        _fail(typer.BadParameter("give exactly one of --user and --input"))
    try:
        paths = explain_run(run, out, user=user, history_file=history, data=data)
    except MiirError as exc:
        _fail(exc)
    for path in paths.values():
        typer.echo(str(path))


@app.command()
def export(
    run: Annotated[
        Path, typer.Option("--run", "-r", help="Run folder of `miir train` (or a saved model).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the export to.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="Export format: onnx.")] = "onnx",
) -> None:
    """Export the scoring graph (history ids in, scores over all items out) with its item table."""
    from miir.export import export_run

    try:
        info = export_run(run, out, fmt)
    except MiirError as exc:
        _fail(exc)
    typer.echo(
        f"{out / 'model.onnx'}: {info['display_name']}, history {info['history_len']}, "
        f"{info['n_items']} items, opset {info['opset']}, "
        f"max |onnxruntime - torch| {info['check']['max_abs_diff']:.1e}"
    )


@app.command()
def recommend(
    run: Annotated[
        Path, typer.Option("--run", "-r", help="Run folder of `miir train` (or a saved model).")
    ],
    input_: Annotated[
        Path,
        typer.Option("--input", "-i", help='JSONL: {"user": optional, "history": [...]} a line.'),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write.")],
    k: Annotated[int, typer.Option("--k", min=1, help="Items per user.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Users scored together.")] = 256,
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen/--keep-seen", help="Leave out the history's items.")
    ] = True,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar.")
    ] = True,
) -> None:
    """Top-k items for every history of a JSONL file, written to parquet (user, line, rank,
    item, score, cut)."""
    from miir.inference import recommend_jsonl
    from miir.recommender import Recommender

    try:
        stats = recommend_jsonl(
            Recommender.load(run),
            input_,
            out,
            k=k,
            batch_size=batch_size,
            exclude_seen=exclude_seen,
            progress=progress,
        )
    except MiirError as exc:
        _fail(exc)
    typer.echo(
        f"{stats['users']:,} users, {stats['rows']:,} rows written to {out} "
        f"({stats['cut']:,} histories cut to the model's length, {stats['warnings']:,} warnings)"
    )


@app.command("impute-data")
def impute_data(
    run: Annotated[
        Path,
        typer.Option(
            "--run", "-r", help="Run folder (or checkpoint) of a trained imputer: lrmm, miir."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option("--data", "-d", help="Parent artifact, the one the imputer was trained on."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Derived artifact folder to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact folder.")] = False,
) -> None:
    """Fill every missing side value of an artifact with an imputer's predictions (the paper's
    FDSA+LRMM and NOVA+LRMM data); users, split and negatives stay the parent's."""
    from miir.data.artifact import Artifact
    from miir.data.derived import impute_artifact

    try:
        manifest = impute_artifact(Artifact(data), run, out, overwrite=overwrite)
    except MiirError as exc:
        _fail(exc)
    for name, info in manifest["derived"]["fields"].items():
        typer.echo(f"{name:<16}{info['imputed_values']:>9,} values imputed ({info['rule']})")
    typer.echo(f"\nartifact written to {out}")


@app.command()
def serve(
    run: Annotated[
        Path, typer.Option("--run", "-r", help="Run folder of `miir train` (or a saved model).")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers_threads: Annotated[
        int, typer.Option("--workers-threads", min=1, help="Requests scored at the same time.")
    ] = 2,
    torch_threads: Annotated[int, typer.Option(min=1, help="torch threads per scoring call.")] = 1,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Larger bodies get 413.")] = 1 << 20,
    max_batch: Annotated[int, typer.Option(min=1, help="Histories per /recommend/batch.")] = 256,
    batching: Annotated[
        bool, typer.Option(help="Score concurrent /recommend requests together (one pass).")
    ] = True,
    micro_batch: Annotated[
        int, typer.Option(min=1, help="Concurrent /recommend requests per coalesced pass.")
    ] = 64,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a request waits for batch-mates (ms).")
    ] = 2.0,
    batch_threads: Annotated[
        int, typer.Option(min=1, help="Coalesced batches scored at the same time.")
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
    trim_seconds: Annotated[
        float,
        typer.Option(
            min=0, help="Return freed memory to the OS at most this often, in seconds (0: never)."
        ),
    ] = 1.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port, each with its own model copy (about one "
            "per core: one process answers on about one core).",
        ),
    ] = 1,
) -> None:
    """Serve a run over HTTP (FastAPI + uvicorn): /recommend, /impute, /recommend/batch,
    /items/{id}, /health, /metadata; OpenAPI docs at /docs."""
    from miir.serve import ServeConfig
    from miir.serve import serve as serve_run

    try:
        config = ServeConfig(
            max_body_bytes, max_batch, workers_threads, torch_threads,
            batching=batching, micro_batch=micro_batch, max_wait_ms=max_wait_ms,
            batch_threads=batch_threads, trim_seconds=trim_seconds,
        )  # fmt: skip
        serve_run(run, host, port, config, access_log=access_log, workers=workers)
    except MiirError as exc:
        _fail(exc)


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Raw data folder, as `miir prepare` takes (default: "
            "../shared/data/amazon-beauty, else ../shared/data/ml-100k).",
        ),
    ] = None,
    data_root: Annotated[
        Path,
        typer.Option(help="Where to look for amazon-beauty (else ml-100k) without --data."),
    ] = Path("../shared/data"),
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="Artifact folder (default: artifacts/beauty-d if prepared with the same "
            "options, else artifacts/<name>-demo)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    report: Annotated[
        Path | None, typer.Option(help="Report folder (default: <out>/report).")
    ] = None,
    discard: Annotated[
        float, typer.Option(help="Hide side values with this probability (imputation vs truth).")
    ] = 0.5,
    epochs: Annotated[
        int,
        typer.Option(
            help="Training epochs: one is about 38 s with validation on amazon-beauty on 2 "
            "cores, so the default 14 ends within about 9 minutes."
        ),
    ] = 14,
    seed: Annotated[int, typer.Option(help="Seed of preparation and training.")] = 42,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a non-demo --out or a mismatched --artifacts folder.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Prepare data, train MIIR briefly, evaluate it and write a report (the README's demo)."""
    from miir.demo import DemoOptions, run_demo

    opts = DemoOptions(
        data=data,
        shared=data_root,
        artifacts=artifacts,
        out=out,
        report=report,
        discard=discard,
        epochs=epochs,
        seed=seed,
        threads=threads,
        overwrite=overwrite,
        progress=progress,
    )
    try:
        run_demo(opts, say=typer.echo, argv=sys.argv[2:])
    except MiirError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover
    app(prog_name="miir")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
