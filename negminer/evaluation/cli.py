"""``negminer evaluate``: the command (registered on the app in :mod:`negminer.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

_SPLIT_HELP = "Query split to evaluate on (query_splits.parquet or qrels/SPLIT.tsv); 'all' for every query."


def evaluate_command(
    retrieval_set: Annotated[
        Path, typer.Argument(help="Labelled retrieval set folder: corpus, queries, qrels (BEIR or ../shared/data).")
    ],
    train: Annotated[
        Path | None,
        typer.Option("--train", help="Dataset version (ROOT/NAME/vNNNN, or ROOT/NAME for LATEST) to fine-tune on."),
    ] = None,
    against: Annotated[
        Path | None, typer.Option("--against", help="A second version, fine-tuned on with the same budget and seed.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the results JSON here (default: print it).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Local sentence-transformers folder.")] = None,
    split: Annotated[str | None, typer.Option("--split", help=_SPLIT_HELP)] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps (evaluate.steps).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Training rows per step (evaluate.batch_size).")
    ] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Seeds weights and batch order.")] = None,
    max_seq_length: Annotated[
        int | None, typer.Option("--max-seq-length", min=1, help="Token length for training and evaluation.")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="Training arithmetic: float32 or bfloat16 (evaluate.precision)."),
    ] = None,
    max_queries: Annotated[
        int | None, typer.Option("--max-queries", min=1, help="Only the first N queries (a quick check).")
    ] = None,
    max_corpus: Annotated[
        int | None, typer.Option("--max-corpus", min=1, help="Only N documents, the relevant ones first.")
    ] = None,
    titles: Annotated[
        bool | None, typer.Option("--titles/--no-titles", help="Put document titles before their text.")
    ] = None,
    diagnostics: Annotated[
        bool | None,
        typer.Option(
            "--diagnostics/--no-diagnostics",
            help="Alignment and uniformity of every model on the set (evaluate.diagnostics.enabled).",
        ),
    ] = None,
) -> None:
    """Report nDCG@10, recall@100, MRR@10, alignment and uniformity of a model, and of copies fine-tuned
    on --train/--against.

    The table goes to stderr; the results JSON to --output (its path printed last) or to stdout.
    Each trained version also keeps a copy beside it, in ROOT/NAME/evaluations/VERSION/.
    """
    from negminer.evaluation import evaluate
    from negminer.evaluation.records import markdown_table, summary_line

    given: dict[str, Any] = {
        "model": model,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "max_seq_length": max_seq_length,
        "precision": precision,
        "max_queries": max_queries,
        "max_corpus": max_corpus,
        "titles": titles,
    }
    options = {key: value for key, value in given.items() if value is not None}
    if diagnostics is not None:
        options["diagnostics"] = {"enabled": diagnostics}
    if split is not None:
        options["split"] = None if split == "all" else split
    result = evaluate(retrieval_set, train=train, against=against, output=output, **options)
    typer.echo(summary_line(result.record), err=True)
    typer.echo(markdown_table(result.record), err=True)
    for path in result.stored:
        typer.echo(f"kept beside the version: {path}", err=True)
    if result.path is None:
        typer.echo(json.dumps(result.record, indent=2, sort_keys=True))
    else:
        typer.echo(str(result.path))
