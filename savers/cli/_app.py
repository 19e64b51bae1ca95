"""The ``savegame`` commands (click), rendered with rich.

Conventions: data on stdout, diagnostics (progress, notes, errors) on stderr; a human
table by default and ``--json`` for scripts (one JSON object, or JSON Lines for listings);
a failure is one line on stderr and a non-zero exit (1; 2 for usage errors); no colour,
no progress bar and no prompt when the stream is not a terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.json import JSON
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.tree import Tree

from .. import codec
from ..archive import ArchiveReader, ArchiveWriter, check_archive
from ..base import BaseSaver, StoredCheckpoint, _location
from ..errors import SavegameError
from ..maintenance import ThreadStats, copy_thread, merge_thread, thread_stats, verify_thread
from ..registry import open_saver, scheme_of
from ._view import ViewSerializer, dig, to_json

F = TypeVar("F", bound=Callable[..., Any])

_KINDS = {codec.KEYFRAME: "keyframe", codec.DELTA: "delta", codec.ANCHOR: "delta*",
          codec.REVERSE: "reverse"}


# -- output ------------------------------------------------------------------------------
def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    width = None if tty or os.environ.get("COLUMNS") else 200
    return Console(file=stream, width=width, highlight=tty, soft_wrap=False,
                   no_color=not tty or None)


class Out:
    """stdout for data, stderr for notes and progress."""

    def __init__(self) -> None:
        self.data = _console(stderr=False)
        self.note = _console(stderr=True)

    def json(self, value: Any) -> None:
        """One JSON object (or one line of JSON Lines) on stdout."""
        sys.stdout.write(json.dumps(to_json(value), ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.note, transient=False,
            disable=not sys.stderr.isatty(),
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds, for JSON."""
    return _time(value).replace(" ", "T") if value is not None else None


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 2) if b else None


def _times(ratio: float | None) -> str:
    return f"{ratio}x" if ratio is not None else "-"


# -- the command group -------------------------------------------------------------------
class _Group(click.Group):
    """Turns any failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("savegame: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except Exception as exc:
            if os.environ.get("SAVEGAME_DEBUG"):
                traceback.print_exc()
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            message = " ".join(text.split()) or type(exc).__name__
            if not isinstance(exc, (SavegameError, OSError, ValueError, KeyError)):
                message = f"{type(exc).__name__}: {message}"
            if len(message) > 400:
                message = message[:399] + "…"
            click.echo(f"savegame: error: {message}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="savegame", prog_name="savegame")
def cli() -> None:
    """Look inside savegame checkpoint stores, check them, and move them around.

    Every command names its store with -s/--store URI (or the SAVEGAME_URI environment
    variable): memory://NAME, mongodb://host:27017/DB, mongodb+srv://..., file:///PATH,
    redis://host:6379/0. Add --json for machine-readable output.
    """


def _store(func: F) -> F:
    return click.option(
        "-s", "--store", "uri", envvar="SAVEGAME_URI", required=True, metavar="URI",
        help="store URI (default: $SAVEGAME_URI)")(func)


def _json(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="JSON output (one object, or JSON Lines for listings)")(func)


def _namespace(func: F) -> F:
    return click.option("-n", "--namespace", default=None, metavar="NS",
                        help="only this namespace (default: all; the root is '')")(func)


@contextlib.contextmanager
def _opened(uri: str) -> Iterator[BaseSaver]:
    saver = open_saver(uri, serializer=ViewSerializer())
    try:
        yield saver
    finally:
        saver.close()


def _warn_ephemeral(out: Out, uri: str) -> None:
    if scheme_of(uri) == "memory":
        out.note.print("note: a memory:// store lives only as long as this command; "
                       "changes to it are discarded", style="yellow")


def _threads(saver: BaseSaver, given: Sequence[str], prefix: str) -> list[str]:
    if given:
        return list(given)
    return saver.list_threads(prefix=prefix)


def _header(item: StoredCheckpoint) -> codec.RecordHeader | None:
    try:
        return codec.read_header(item.record, 0, _location(item))
    except codec.RecordError:
        return None


# -- ls ----------------------------------------------------------------------------------
@cli.command("ls")
@_store
@click.option("-p", "--prefix", default="", help="only threads whose id starts with this")
@_json
def ls_command(uri: str, prefix: str, as_json: bool) -> None:
    """List threads: checkpoints, namespaces, pending writes, bytes, last update."""
    out = Out()
    with _opened(uri) as saver:
        threads = saver.list_threads(prefix=prefix)
        rows: list[ThreadStats] = []
        with out.progress() as bar:
            task = bar.add_task("reading threads", total=len(threads))
            for thread in threads:
                stats = thread_stats(thread, *saver.read_records(thread))
                rows.append(stats)
                bar.advance(task)
                if as_json:
                    out.json({"thread": thread, "checkpoints": stats.checkpoints,
                              "namespaces": stats.namespaces, "writes": stats.writes,
                              "stored_bytes": stats.stored_bytes,
                              "raw_bytes": stats.raw_bytes,
                              "last_update": _iso(stats.last_update)})
    if as_json:
        return
    table = Table(title=f"{len(rows)} thread(s)", title_justify="left")
    for name, justify in (("thread", "left"), ("checkpoints", "right"),
                          ("namespaces", "right"), ("writes", "right"),
                          ("stored", "right"), ("raw", "right"), ("last update", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for stats in rows:
        table.add_row(escape(stats.thread_id), str(stats.checkpoints), str(stats.namespaces),
                      str(stats.writes), _size(stats.stored_bytes), _size(stats.raw_bytes),
                      _time(stats.last_update))
    out.data.print(table)


# -- history -----------------------------------------------------------------------------
def _entry(item: StoredCheckpoint, children: int) -> dict[str, Any]:
    header = _header(item)
    return {
        "id": item.id, "parent": item.parent_id, "namespace": item.namespace,
        "step": item.step, "node": item.node_id, "next": item.next_node_id,
        "created_at": _iso(item.created_at), "size": len(item.record),
        "kind": "corrupt" if header is None else _KINDS.get(header.kind, "?"),
        "depth": item.depth, "seq": item.seq, "children": children,
    }


def _moves(item: StoredCheckpoint) -> str:
    """``node -> next``; a checkpoint without nodes (LangGraph's) shows its metadata
    ``source`` (input, loop, update, fork) instead."""
    source = item.metadata.get("source") if item.node_id is None else None
    node = item.node_id or (f"({source})" if isinstance(source, str) else "-")
    return f"{node} -> {item.next_node_id or '-'}"


def _label(entry: dict[str, Any], moves: str, width: int) -> str:
    kind = entry["kind"]
    style = {"keyframe": "bold cyan", "corrupt": "bold red"}.get(kind, "dim")
    return (f"[bold]step {entry['step']:>3}[/]  {escape(moves.ljust(width))}  "
            f"{entry['created_at'][:19].replace('T', ' ')}  {_size(entry['size']):>9}  "
            f"[{style}]{kind:<8}[/]  [dim]{escape(entry['id'])}[/]")


@cli.command("history")
@_store
@click.argument("thread")
@_namespace
@_json
def history_command(uri: str, thread: str, namespace: str | None, as_json: bool) -> None:
    """A thread's checkpoints as a tree: forks branch off the checkpoint they fork from.

    Each line: step, node that ran -> node to run next, time, record size, and whether
    the record is a keyframe, a delta, or a reverse record (a former keyframe encoded
    against a newer one); delta* = a delta against an earlier anchor (format 1-2)."""
    out = Out()
    with _opened(uri) as saver:
        checkpoints, _ = saver.read_records(thread)
    if namespace is not None:
        checkpoints = [c for c in checkpoints if c.namespace == namespace]
    if not checkpoints:
        raise KeyError(f"thread {thread!r} has no checkpoints"
                       + (f" in namespace {namespace!r}" if namespace is not None else ""))
    spaces: dict[str, list[StoredCheckpoint]] = defaultdict(list)
    for item in checkpoints:
        spaces[item.namespace].append(item)
    for ns in sorted(spaces):
        items = sorted(spaces[ns], key=lambda c: (c.seq, c.id))
        by_id = {item.id: item for item in items}
        children: dict[str | None, list[StoredCheckpoint]] = defaultdict(list)
        for item in items:
            parent = item.parent_id if item.parent_id in by_id else None
            children[parent].append(item)
        if as_json:
            for item in items:
                out.json({"thread": thread, **_entry(item, len(children[item.id]))})
            continue
        head = max(items, key=lambda c: c.seq)
        on_head_path = set()
        cursor: StoredCheckpoint | None = head
        while cursor is not None:
            on_head_path.add(cursor.id)
            cursor = by_id.get(cursor.parent_id or "")
        width = max(len(_moves(item)) for item in items)
        forks = sum(max(0, len(kids) - 1) for key, kids in children.items()
                    if key is not None)
        root = Tree(f"[bold]{escape(thread)}[/]  namespace {ns!r}: {len(items)} "
                    f"checkpoint(s), {forks} fork(s)")
        starts = sorted(children[None], key=lambda c: c.id not in on_head_path)
        stack: list[tuple[StoredCheckpoint, Tree | None]] = [
            (start, root if start.id in on_head_path else None) for start in reversed(starts)]
        while stack:
            start, place = stack.pop()
            # a line whose parent was pruned (or never stored here) gets its own branch
            branch = place if place is not None else root.add(
                f"[yellow]line[/] from step {start.step} (its parent is not stored)")
            current: StoredCheckpoint | None = start
            while current is not None:
                node = branch.add(_label(_entry(current, len(children[current.id])),
                                         _moves(current), width))
                kids = children[current.id]
                if not kids:
                    break
                main = next((k for k in kids if k.id in on_head_path), kids[-1])
                for other in reversed([k for k in kids if k is not main]):
                    fork = node.add(f"[yellow]branch[/] from step {current.step}")
                    stack.append((other, fork))
                current = main
        out.data.print(root)


# -- show and diff -----------------------------------------------------------------------
def _load(saver: BaseSaver, thread: str, checkpoint: str | None, namespace: str) -> Any:
    found = saver.get(thread, checkpoint, namespace=namespace)
    if found is None:
        what = f"no checkpoint {checkpoint!r}" if checkpoint else "no checkpoints"
        raise KeyError(f"thread {thread!r} (namespace {namespace!r}) has {what}")
    return found


@cli.command("show")
@_store
@click.argument("thread")
@click.argument("checkpoint", required=False)
@click.option("-n", "--namespace", default="", metavar="NS", help="namespace (default '')")
@click.option("--path", default="", metavar="KEY.PATH",
              help="only this part of the state, e.g. messages.-1 or messages.-1.content")
@_json
def show_command(uri: str, thread: str, checkpoint: str | None, namespace: str, path: str,
                 as_json: bool) -> None:
    """A checkpoint's decoded state (the thread's latest unless CHECKPOINT is given).

    Nothing is imported or unpickled: custom types show as {"$type": name, ...fields},
    LangGraph channel values are parsed from their msgpack."""
    out = Out()
    with _opened(uri) as saver:
        found = _load(saver, thread, checkpoint, namespace)
    value = dig(found.state, path)
    if as_json:
        out.json({"thread": thread, "namespace": namespace, "id": found.id,
                  "parent": found.parent_id, "step": found.step, "node": found.node_id,
                  "next": found.next_node_id, "created_at": _iso(found.created_at),
                  "metadata": dict(found.metadata), "path": path, "value": value})
        return
    out.note.print(f"thread {thread!r}  checkpoint {found.id}  step {found.step}  "
                   f"{found.node_id or '-'} -> {found.next_node_id or '-'}  "
                   f"{_time(found.created_at)}" + (f"  path {path}" if path else ""),
                   highlight=False, markup=False, soft_wrap=True)
    text = json.dumps(to_json(value), ensure_ascii=False, indent=2, default=str)
    if sys.stdout.isatty():
        out.data.print(JSON(text))
    else:
        sys.stdout.write(text + "\n")


def _diff(a: Any, b: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            sub = f"{path}.{key}" if path else str(key)
            if key not in b:
                out.append({"path": sub, "change": "removed", "before": a[key]})
            else:
                _diff(a[key], b[key], sub, out)
        for key in b:
            if key not in a:
                sub = f"{path}.{key}" if path else str(key)
                out.append({"path": sub, "change": "added", "after": b[key]})
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(min(len(a), len(b))):
            _diff(a[index], b[index], f"{path}.{index}" if path else str(index), out)
        for index in range(len(b), len(a)):
            out.append({"path": f"{path}.{index}" if path else str(index),
                        "change": "removed", "before": a[index]})
        for index in range(len(a), len(b)):
            out.append({"path": f"{path}.{index}" if path else str(index),
                        "change": "added", "after": b[index]})
    elif type(a) is not type(b) or a != b:
        out.append({"path": path or "(state)", "change": "changed", "before": a, "after": b})


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(to_json(value), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@cli.command("diff")
@_store
@click.argument("thread")
@click.argument("a")
@click.argument("b")
@click.option("-n", "--namespace", default="", metavar="NS", help="namespace (default '')")
@click.option("--path", default="", metavar="KEY.PATH", help="compare only this part")
@_json
def diff_command(uri: str, thread: str, a: str, b: str, namespace: str, path: str,
                 as_json: bool) -> None:
    """What changed from checkpoint A to checkpoint B, by key path (lists by index)."""
    out = Out()
    with _opened(uri) as saver:
        first = _load(saver, thread, a, namespace)
        second = _load(saver, thread, b, namespace)
    changes: list[dict[str, Any]] = []
    _diff(dig(first.state, path), dig(second.state, path), path, changes)
    if as_json:
        out.json({"thread": thread, "namespace": namespace, "a": first.id, "b": second.id,
                  "changes": changes})
        return
    table = Table(title=f"{len(changes)} change(s) from step {first.step} to step "
                        f"{second.step}", title_justify="left")
    for name in ("path", "change", "before", "after"):
        table.add_column(name, overflow="fold")
    for change in changes:
        table.add_row(escape(change["path"]), change["change"],
                      escape(_short(change["before"])) if "before" in change else "",
                      escape(_short(change["after"])) if "after" in change else "")
    out.data.print(table)


# -- verify and stats --------------------------------------------------------------------
@cli.command("verify")
@_store
@click.argument("threads", nargs=-1)
@click.option("-p", "--prefix", default="", help="only threads whose id starts with this")
@_json
def verify_command(uri: str, threads: tuple[str, ...], prefix: str, as_json: bool) -> None:
    """Decode every record: checksums, delta chains, chunks, pending writes.

    Reports each damaged checkpoint by thread and id; exits 1 if anything is wrong."""
    out = Out()
    problems = []
    checked = writes = 0
    with _opened(uri) as saver:
        names = _threads(saver, threads, prefix)
        with out.progress() as bar:
            task = bar.add_task("verifying", total=len(names))
            for thread in names:
                count, nwrites, found = verify_thread(saver, thread)
                checked += count
                writes += nwrites
                problems.extend(found)
                bar.update(task, advance=1, description=f"verifying ({checked} checkpoints)")
    damaged = len({(p.thread_id, p.namespace, p.checkpoint_id) for p in problems})
    if as_json:
        out.json({"ok": not problems, "threads": len(names), "checkpoints": checked,
                  "writes": writes, "damaged": damaged,
                  "problems": [p.as_dict() for p in problems]})
    else:
        if problems:
            table = Table(title=f"{len(problems)} problem(s)", title_justify="left")
            for name in ("thread", "namespace", "checkpoint", "kind", "problem"):
                table.add_column(name, overflow="fold")
            for p in problems:
                table.add_row(escape(p.thread_id), escape(repr(p.namespace)),
                              escape(p.checkpoint_id or "-"), p.kind, escape(p.message))
            out.data.print(table)
        verdict = "[bold red]DAMAGED[/]" if problems else "[bold green]OK[/]"
        out.data.print(f"{verdict}: {len(names)} thread(s), {checked} checkpoint(s), "
                       f"{writes} pending write(s) checked; {damaged} damaged")
    if problems:
        raise SystemExit(1)


@cli.command("stats")
@_store
@click.argument("threads", nargs=-1)
@click.option("-p", "--prefix", default="", help="only threads whose id starts with this")
@_json
def stats_command(uri: str, threads: tuple[str, ...], prefix: str, as_json: bool) -> None:
    """Stored bytes against raw state bytes, compression and delta ratios, backend details."""
    out = Out()
    total = ThreadStats("*")
    with _opened(uri) as saver:
        names = _threads(saver, threads, prefix)
        with out.progress() as bar:
            task = bar.add_task("reading", total=len(names))
            for thread in names:
                total.add(thread_stats(thread, *saver.read_records(thread)))
                bar.advance(task)
        details_of = getattr(saver, "storage_details", None)
        details: dict[str, Any] = dict(details_of()) if callable(details_of) else {}
    report: dict[str, Any] = {
        "threads": len(names), "checkpoints": total.checkpoints,
        "keyframes": total.keyframes, "deltas": total.deltas, "writes": total.writes,
        "stored_bytes": total.stored_bytes, "raw_bytes": total.raw_bytes,
        "write_bytes": total.write_bytes,
        "compression_ratio": _ratio(total.raw_bytes, total.stored_bytes),
        "keyframe_ratio": _ratio(total.keyframe_raw, total.keyframe_stored),
        "delta_ratio": _ratio(total.delta_raw, total.delta_stored),
        "mean_keyframe_bytes": round(total.keyframe_stored / total.keyframes)
        if total.keyframes else None,
        "mean_delta_bytes": round(total.delta_stored / total.deltas) if total.deltas else None,
        "unreadable_headers": total.unreadable, "backend": details,
    }
    if as_json:
        out.json(report)
        return
    table = Table(title="storage", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("threads", str(report["threads"])),
        ("checkpoints", f"{total.checkpoints} ({total.keyframes} keyframes, "
                        f"{total.deltas} deltas)"),
        ("pending writes", f"{total.writes} ({_size(total.write_bytes)})"),
        ("stored (records)", _size(total.stored_bytes)),
        ("raw state", _size(total.raw_bytes)),
        ("compression (raw / stored)", _times(report["compression_ratio"])),
        ("keyframes: raw / stored", _times(report["keyframe_ratio"])),
        ("deltas: raw / stored", _times(report["delta_ratio"])),
        ("mean keyframe / delta", f"{_size(int(report['mean_keyframe_bytes'] or 0))} / "
                                  f"{_size(int(report['mean_delta_bytes'] or 0))}"),
    ]
    for key, value in details.items():
        if isinstance(value, dict):
            value = ", ".join(f"{v} {k}" for k, v in value.items())
        rows.append((key if key == "backend" else f"backend: {key}", str(value)))
    for what, value in rows:
        table.add_row(what, value)
    out.data.print(table)


# -- export, import, copy ----------------------------------------------------------------
@cli.command("export")
@_store
@click.argument("threads", nargs=-1)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="archive file to write (see README: export archive format)")
@click.option("-p", "--prefix", default="", help="only threads whose id starts with this")
@_json
def export_command(uri: str, threads: tuple[str, ...], output: str, prefix: str,
                   as_json: bool) -> None:
    """Write threads to a streaming, checksummed archive; records stay encoded."""
    out = Out()
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    with _opened(uri) as saver:
        names = _threads(saver, threads, prefix)
        with ArchiveWriter.open(partial) as writer, out.progress() as bar:
            task = bar.add_task("exporting", total=len(names))
            for thread in names:
                checkpoints, pending = saver.read_records(thread)
                if not checkpoints and not pending:
                    raise KeyError(f"thread {thread!r} has no checkpoints")
                writer.write_thread(thread, checkpoints, pending)
                bar.update(task, advance=1,
                           description=f"exporting ({writer.checkpoints} checkpoints)")
    os.replace(partial, target)  # a reader never sees a half-written archive under its name
    size = target.stat().st_size
    summary = {"archive": str(target), "threads": writer.threads,
               "checkpoints": writer.checkpoints, "writes": writer.writes, "bytes": size}
    if as_json:
        out.json(summary)
    else:
        out.data.print(f"exported {writer.threads} thread(s), {writer.checkpoints} "
                       f"checkpoint(s), {writer.writes} pending write(s) to {target} "
                       f"({_size(size)})", markup=False, highlight=False)


@cli.command("import")
@_store
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@_json
def import_command(uri: str, archive: str, as_json: bool) -> None:
    """Import an archive: checked whole first, then written thread by thread (records
    already in the store are skipped, so a re-run completes an interrupted import; a
    thread the store holds with other content is refused, naming it)."""
    out = Out()
    summary = check_archive(archive)
    _warn_ephemeral(out, uri)
    with _opened(uri) as saver, ArchiveReader.open(archive) as reader, out.progress() as bar:
        task = bar.add_task("importing", total=summary["checkpoints"])
        for thread in reader.threads():
            merge_thread(saver, thread.thread_id, thread.checkpoints, thread.writes,
                         progress=lambda n: bar.advance(task, n))
    result = {"archive": archive, "threads": summary["threads"],
              "checkpoints": summary["checkpoints"], "writes": summary["writes"]}
    if as_json:
        out.json(result)
    else:
        out.data.print(f"imported {result['threads']} thread(s), {result['checkpoints']} "
                       f"checkpoint(s), {result['writes']} pending write(s)",
                       markup=False, highlight=False)


@cli.command("copy")
@click.argument("source", metavar="SRC_URI")
@click.argument("target", metavar="DST_URI")
@click.argument("threads", nargs=-1)
@click.option("-p", "--prefix", default="", help="only threads whose id starts with this")
@click.option("--batch", default=500, show_default=True,
              help="checkpoints per write to the target")
@_json
def copy_command(source: str, target: str, threads: tuple[str, ...], prefix: str,
                 batch: int, as_json: bool) -> None:
    """Copy threads between two stores (any backends), records as stored.

    Resumable: re-running after an interruption writes only what the target lacks,
    so nothing is duplicated or skipped. A thread the target holds with other content
    is refused, naming it."""
    out = Out()
    _warn_ephemeral(out, target)
    copied = present = writes = 0
    with _opened(source) as src, _opened(target) as dst:
        names = _threads(src, threads, prefix)
        with out.progress() as bar:
            thread_task = bar.add_task("threads", total=len(names))
            checkpoint_task = bar.add_task("checkpoints", total=None)
            for thread in names:
                result = copy_thread(src, dst, thread, batch=batch,
                                     progress=lambda n: bar.advance(checkpoint_task, n))
                copied += result.copied
                present += result.present
                writes += result.writes_copied
                bar.advance(thread_task)
                if as_json:
                    out.json({"thread": thread, "copied": result.copied,
                              "already_there": result.present,
                              "writes_copied": result.writes_copied})
    if not as_json:
        out.data.print(f"copied {copied} checkpoint(s) and {writes} pending write(s) of "
                       f"{len(names)} thread(s); {present} checkpoint(s) were already there",
                       markup=False, highlight=False)


# -- prune and delete --------------------------------------------------------------------
@cli.command("prune")
@_store
@click.argument("thread")
@click.option("--keep-last", "keep", type=click.IntRange(min=1), required=True,
              help="checkpoints to keep per namespace (the newest, in append order)")
@_namespace
@click.option("--dry-run", is_flag=True, help="only say what would be deleted")
@_json
def prune_command(uri: str, thread: str, keep: int, namespace: str | None, dry_run: bool,
                  as_json: bool) -> None:
    """Delete all but the newest N checkpoints of a thread (chain-safe: survivors that
    were deltas of deleted records are re-encoded first)."""
    out = Out()
    _warn_ephemeral(out, uri)
    deleted: dict[str, int] = {}
    with _opened(uri) as saver:
        checkpoints, _ = saver.read_records(thread)
        if not checkpoints:
            raise KeyError(f"thread {thread!r} has no checkpoints")
        spaces: dict[str, list[StoredCheckpoint]] = defaultdict(list)
        for item in checkpoints:
            if namespace is None or item.namespace == namespace:
                spaces[item.namespace].append(item)
        for ns, items in sorted(spaces.items()):
            items.sort(key=lambda c: (c.seq, c.id), reverse=True)
            doomed = [c.id for c in items[keep:]]
            deleted[ns] = len(doomed)
            if doomed and not dry_run:
                saver.delete_checkpoints(thread, doomed, namespace=ns)
    total = sum(deleted.values())
    if as_json:
        out.json({"thread": thread, "kept_per_namespace": keep, "deleted": total,
                  "dry_run": dry_run, "namespaces": deleted})
    else:
        verb = "would delete" if dry_run else "deleted"
        out.data.print(f"{verb} {total} checkpoint(s) of thread {thread!r}, keeping the "
                       f"last {keep} per namespace", markup=False, highlight=False)


@cli.command("delete")
@_store
@click.argument("thread")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
@_json
def delete_command(uri: str, thread: str, yes: bool, as_json: bool) -> None:
    """Delete a thread: every checkpoint, pending write and released version."""
    out = Out()
    _warn_ephemeral(out, uri)
    with _opened(uri) as saver:
        checkpoints, _ = saver.read_records(thread)
        versions = saver.versions(thread)
        if not checkpoints and not versions:
            raise KeyError(f"thread {thread!r} has no checkpoints")
        if not yes:
            if not sys.stdin.isatty():
                raise click.UsageError("refusing to delete without --yes (no terminal to "
                                       "ask for confirmation)")
            click.confirm(f"Delete thread {thread!r} ({len(checkpoints)} checkpoint(s), "
                          f"{len(versions)} released version(s))?", abort=True, err=True)
        saver.delete_thread(thread)
    if as_json:
        out.json({"thread": thread, "deleted_checkpoints": len(checkpoints),
                  "deleted_versions": len(versions)})
    else:
        out.data.print(f"deleted thread {thread!r}: {len(checkpoints)} checkpoint(s)",
                       markup=False, highlight=False)


def run(argv: Sequence[str] | None = None) -> None:
    from ._migrate import migrate

    cli.add_command(migrate)
    try:
        status = cli.main(args=list(argv) if argv is not None else None,
                          prog_name="savegame", standalone_mode=False)
        if isinstance(status, int) and status:
            raise SystemExit(status)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        click.echo("savegame: aborted", err=True)
        raise SystemExit(1) from None
    except click.ClickException as exc:  # usage errors too: one line, exit status 2
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"savegame: error: {exc.format_message()}{hint}", err=True)
        raise SystemExit(exc.exit_code) from None
