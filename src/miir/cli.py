"""The ``miir`` command line. Entry points only parse input and call the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from miir.errors import MiirError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MIIR: sequential recommendation as missing information imputation.",
)


@app.callback()
def _root() -> None:
    """MIIR: sequential recommendation as missing information imputation."""


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
        _fail(exc)
    try:
        schema = (
            schema_from_mapping(load_schema_file(schema_file), file=schema_file)
            if schema_file
            else None
        )
        raw = read_source(source, fmt, schema=schema, overrides=_parse_overrides(field or []))
        manifest = run_prepare(raw, out, config, overwrite=overwrite, progress=not quiet)
    except MiirError as exc:
        _fail(exc)
    typer.echo(summary_table(manifest))
    typer.echo(f"\nartifact written to {out}")


def main() -> None:  # pragma: no cover
    app(prog_name="miir")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
