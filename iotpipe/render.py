"""Everything iotpipe shows: live progress, tables, summaries, JSON and error lines.

The only module that prints. Commands hand it result objects from the engine; in ``--json``
mode the same objects are dumped as one JSON document on stdout and progress is silent.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iotpipe.engine import Event, ResourceResult, RunResult

ACTION_STYLE = {
    "create": ("+", "green", "created"),
    "update": ("~", "yellow", "updated"),
    "unchanged": ("=", "dim", "unchanged"),
    "delete": ("-", "red", "deleted"),
    "absent": (" ", "dim", "absent"),
    "skipped": ("!", "magenta", "skipped"),
    "pending": ("…", "yellow", "pending"),
    "scheduled": ("-", "red", "scheduled"),
    "blocked": ("!", "red", "blocked"),
}
PLAN_WORDS = {"create": "will be created", "update": "will be updated", "unchanged": "no changes"}
DESTROY_WORDS = {"delete": "will be deleted", "scheduled": "will be",
                 "absent": "does not exist", "skipped": "will be left alone", "blocked": "stops destroy"}
HEALTH_STYLE = {"ok": "green", "missing": "red", "drifted": "yellow", "foreign": "magenta",
                "disabled": "dim", "unwanted": "yellow"}


def _short(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Target:
    """Where a command works. Shown first, so an operator sees the env, account, region,
    endpoint and config before anything is touched (and scripts get them in --json)."""

    env: str
    account: str
    region: str
    endpoint: str
    config_file: str | None  # None: built-in defaults
    config: str  # the file, or "built-in defaults: config/<env>.toml not found"
    state_file: str

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "config_file": self.config_file, "config": self.config,
                "state_file": self.state_file}


# What the terminal gets instead when its encoding (LANG=C, PYTHONIOENCODING=ascii, an old
# Windows code page) cannot print these; rich itself switches tables to ASCII boxes then.
ASCII_FALLBACK = str.maketrans({"…": "...", "→": "->", "←": "<-", "·": "-", "×": "x", "≤": "<=", "≥": ">=",
                                "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "✓": "ok"})


class _AsciiSafe:
    """A text stream that never raises UnicodeEncodeError: known symbols become ASCII, the
    rest a replacement character, instead of a traceback in place of the output."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        encoding = self.encoding
        safe = text.translate(ASCII_FALLBACK).encode(encoding, "replace").decode(encoding)
        return self._stream.write(safe)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def ascii_safe(stream: Any) -> Any:
    """``stream`` itself when it speaks UTF (nearly always), else an ASCII-safe wrapper."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
    return stream if encoding.startswith("utf") else _AsciiSafe(stream)


class Renderer:
    def __init__(self, *, json_mode: bool = False, console: Console | None = None) -> None:
        self.json_mode = json_mode
        self.out = console or Console(highlight=False, soft_wrap=True, file=ascii_safe(sys.stdout))
        if console is None and not self.out.is_terminal and "COLUMNS" not in os.environ:
            self.out.width = 200  # piped into a file or CI log: don't fold ARNs into 80 columns
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, file=ascii_safe(sys.stderr))
        self._status: Any = None
        self.target: Target | None = None

    # -- where ---------------------------------------------------------------------------------
    def header(self, target: Target) -> None:
        """The top of every AWS command's output; in --json its fields join the document."""
        self.target = target
        if self.json_mode:
            return
        self.out.print(f"[bold]env {escape(target.env)}[/] · account {target.account} · region "
                       f"{target.region} · endpoint {escape(target.endpoint)}")
        self.out.print(f"[dim]config: {escape(target.config)} · state: {escape(target.state_file)}[/]")

    def _document(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, **self.target.as_dict()} if self.target else data

    def defaults_warning(self, target: Target, changes: list[tuple[ResourceResult, Any]], data_loss: bool) -> None:
        """`up` with built-in defaults on a live env: say what the defaults would change."""
        shown = "; ".join(f"{r.logical_id} {c.field}: {_short(c.current, 30)} → {_short(c.desired, 30)}"
                          for r, c in changes[:8]) + ("; ..." if len(changes) > 8 else "")
        self.err.print(f"[yellow]warning:[/] config/{escape(target.env)}.toml not found and env "
                       f"{escape(target.env)} exists: the built-in defaults would change {len(changes)} "
                       f"live setting(s): {escape(shown)}")
        if data_loss:
            self.err.print("[yellow]warning:[/] shortening a retention deletes what is older than the new "
                           "period (stream records, log events); pass --config with the env's file to keep them")

    def destroy_preview(self, preview: RunResult, kept_keys: list[str], *, to_stderr: bool = False) -> None:
        """Everything `destroy` would touch, in its order, before it asks (`plan --destroy` too)."""
        if self.json_mode and not to_stderr:
            self.json(self._document({**preview.as_dict(), "local_key_files": kept_keys}))
            return
        out = self.err if to_stderr else self.out
        for r in preview.resources:
            mark, style, _ = ACTION_STYLE.get(r.action, (" ", "", r.action))
            line = (f"[{style}]{mark} {r.logical_id:<30}[/] [dim]{escape(r.name)}[/] "
                    f"{DESTROY_WORDS.get(r.action, r.action)}")
            if r.message and r.action != "absent":
                line += f"  [{style or 'dim'}]{escape(r.message)}[/]"
            out.print(line)
        counts = preview.count()
        out.print(f"\nDestroy: {counts.get('delete', 0)} to delete, {counts.get('scheduled', 0)} to schedule "
                  f"for deletion, {counts.get('skipped', 0)} left alone (not iotpipe's), "
                  f"{counts.get('absent', 0)} already absent.")
        if kept_keys:
            out.print(self._kept_keys_line(kept_keys, future=True))

    @staticmethod
    def _kept_keys_line(kept_keys: list[str], *, future: bool) -> str:
        verb = "will be left" if future else "left"
        return (f"Local device key files {verb} in place ({len(kept_keys)}): {escape(', '.join(kept_keys))}; "
                "destroy never deletes private keys: remove them yourself once no device needs them")

    # -- live progress -------------------------------------------------------------------------
    def progress(self, event: Event) -> None:
        """Engine callback: a spinner while a resource is worked on, one line when it is done."""
        if self.json_mode:
            return  # stdout holds one JSON document: waits are not part of it
        if event.kind == "progress":
            if event.progress is not None:
                self.wait_line(event.progress.message, keep=event.progress.kind == "lock-takeover")
            return
        if event.kind == "start":
            if self.out.is_terminal:
                self._stop_spinner()
                spinner = "dots" if self.out.encoding.startswith("utf") else "line"  # ASCII terminals
                self._status = self.out.status(f"{event.verb}: {event.logical_id}", spinner=spinner)
                self._status.start()
            return
        self._stop_spinner()
        # plan, status and outputs show their results as a whole at the end instead
        if event.verb in ("up", "destroy") and event.result is not None and event.result.action in ACTION_STYLE:
            self._resource_line(event.result)

    def wait_line(self, text: str, *, keep: bool = False) -> None:
        """What a wait is waiting for: the spinner's text on a terminal, else a line on stderr
        (stdout stays the result, for pipes); ``keep`` for news that must stay on screen."""
        if self.json_mode:
            return
        if self._status is not None and not keep:
            self._status.update(f"{escape(text)}")
        else:
            self.err.print(f"[dim]  … {escape(text)}[/]")

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _resource_line(self, r: ResourceResult) -> None:
        mark, style, word = ACTION_STYLE[r.action]
        line = f"[{style}]{mark} {word:<9}[/] {r.logical_id:<30} [dim]{escape(r.name)}[/]"
        if r.message:
            line += f"  [{style}]{escape(r.message)}[/]"
        self.out.print(line)
        for change in r.changes if r.action == "update" else ():
            self.out.print(f"      [yellow]{change.field}[/]: {escape(_short(change.current))} → "
                           f"{escape(_short(change.desired))}")

    # -- final results -------------------------------------------------------------------------
    def run_summary(self, result: RunResult, kept_keys: list[str] | None = None) -> None:
        if self.json_mode:
            extra = {"local_key_files": kept_keys} if kept_keys is not None else {}
            self.json(self._document({**result.as_dict(), **extra}))
            return
        counts = result.count()
        parts = [f"{n} {ACTION_STYLE[a][2]}" for a, n in counts.items() if a in ACTION_STYLE]
        self.out.print(f"\n[bold]{result.command}[/] env [bold]{result.env}[/] "
                       f"({result.region}, account {result.account}): {', '.join(parts) or 'nothing to do'} "
                       f"in {result.elapsed_s:.1f}s")
        if kept_keys:
            self.out.print(self._kept_keys_line(kept_keys, future=False))

    def plan(self, result: RunResult) -> None:
        if self.json_mode:
            self.json(self._document(result.as_dict()))
            return
        pending = [r for r in result.resources if r.action != "unchanged"]
        for r in result.resources:
            mark, style, _ = ACTION_STYLE[r.action]
            self.out.print(f"[{style}]{mark} {r.logical_id:<30}[/] [dim]{escape(r.name)}[/] "
                           f"{PLAN_WORDS.get(r.action, r.action)}")
            if r.message:  # what the configuration gives up, or why a resource is left out
                self.out.print(f"      [magenta]{escape(r.message)}[/]")
            if r.action == "update":
                for c in r.changes:
                    self.out.print(f"      [yellow]{c.field}[/]: {escape(_short(c.current))} → "
                                   f"{escape(_short(c.desired))}")
        self.out.print(f"\nPlan: {sum(r.action == 'create' for r in pending)} to create, "
                       f"{sum(r.action == 'update' for r in pending)} to update, "
                       f"{len(result.resources) - len(pending)} unchanged.")

    def status(self, result: RunResult) -> None:
        if self.json_mode:
            self.json(self._document(result.as_dict()))
            return
        table = Table(title=f"env {result.env} ({result.region}, account {result.account})")
        for column in ("resource", "type", "name", "arn / id", "status"):
            table.add_column(column, overflow="fold")
        for r in result.resources:
            style = HEALTH_STYLE.get(r.health, "")
            health = r.health
            if r.changes:
                health += ": " + ", ".join(c.field for c in r.changes)
            elif r.health in ("disabled", "unwanted") and r.message:
                health += f" ({r.message})"
            elif r.message:
                health += f" — {r.message}"
            table.add_row(r.logical_id, r.resource_type, r.name,
                          r.ids.get("arn") or r.ids.get("id") or r.ids.get("uuid") or "",
                          f"[{style}]{escape(health)}[/]")
        self.out.print(table)
        counts = result.count("health")
        self.out.print(", ".join(f"{n} {h}" for h, n in counts.items()))

    def outputs(self, outputs: dict[str, str]) -> None:
        if self.json_mode:
            self.json(outputs)
            return
        width = max((len(k) for k in outputs), default=0)
        for key, value in outputs.items():
            self.out.print(f"{key:<{width}} = {escape(value)}")

    def demo_report(self, report: Any) -> None:
        if self.json_mode:
            self.json(report.__dict__)
            return
        r = report
        self.out.print(
            f"\n[bold]Readings[/]: {r.readings_sent} valid + {r.invalid_sent} invalid published to Kinesis; "
            f"{r.batches} handler batches ({r.redeliveries} re-deliveries, {r.undelivered} undelivered)\n"
            f"[bold]DynamoDB[/]: {r.items_stored} metric items, {r.anomalous_items} flagged as anomalies\n"
            f"[bold]S3[/]: {r.archive_objects} raw archive objects (one per batch), "
            f"{r.rejected_objects} quarantine objects under rejected/\n")

    # -- devices -------------------------------------------------------------------------------
    def device_added(self, result: Any) -> None:
        """`device add`: what to configure on the sensor. Paths only: the key is never shown."""
        if self.json_mode:
            self.json(result.as_dict())
            return
        mark, style, word = ("~", "yellow", "rotated") if result.action == "rotate" else ACTION_STYLE[result.action]
        self.out.print(f"[{style}]{mark} {word}[/] device [bold]{escape(result.device_id)}[/] "
                       f"(env {escape(result.env)})")
        for note in result.notes:
            self.out.print(f"  [dim]{escape(note)}[/]")
        rows = [
            ("thing", result.thing_arn),
            ("certificate id", result.certificate_id),
            ("certificate arn", result.certificate_arn),
            ("endpoint", result.endpoint),
            ("client id", result.device_id),
            ("publish to", result.topic),
            ("certificate", result.certificate_path),
            ("private key", f"{result.key_path}  (mode 0600; keep it secret)"),
            ("root CA", f"{result.root_ca}  (download it; not stored by iotpipe)"),
        ]
        if result.replaced_certificates:
            rows.append(("retired", ", ".join(result.replaced_certificates)))
        for key, value in rows:
            self.out.print(f"  {key:<16} {escape(value)}")

    def device_list(self, env: str, devices: list[Any]) -> None:
        if self.json_mode:
            self.json({"env": env, "devices": [d.as_dict() for d in devices]})
            return
        table = Table(title=f"devices of env {env}")
        for column in ("device", "attributes", "certificates", "local key", "ours"):
            table.add_column(column, overflow="fold")
        for d in devices:
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(d.attributes.items()))
            certs = "\n".join(f"{c.id[:12]}… {c.status}" for c in d.certificates) or "[red]none[/]"
            table.add_row(escape(d.device_id), escape(attrs), certs,
                          "yes" if d.local_key else "[yellow]no[/]",
                          "yes" if d.managed else "[magenta]no[/]")
        self.out.print(table)
        self.out.print(f"{len(devices)} device(s)")

    def device_removed(self, result: Any) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        if result.action == "absent":
            extra = " (local files removed)" if result.local_files_removed else ""
            self.out.print(f"device {escape(result.device_id)} of env {escape(result.env)} is already gone{extra}")
            return
        certs = ", ".join(c[:12] + "…" for c in result.deleted_certificates) or "none"
        self.out.print(f"[red]- deleted[/] device [bold]{escape(result.device_id)}[/] (env {escape(result.env)}); "
                       f"certificates deleted: {certs}; local files "
                       f"{'removed' if result.local_files_removed else 'none'}")

    def lock_holder(self, text: str) -> None:
        self.out.print(text)

    def message(self, text: str) -> None:
        if not self.json_mode:
            self.out.print(text)

    def warning(self, text: str) -> None:
        """A result that is not whole: on stderr, so stdout stays the (JSON) result."""
        self._stop_spinner()
        self.err.print(f"[yellow]warning:[/] {escape(text)}")

    def error_json(self, code: int, name: str, message: str) -> None:
        """``--json``: the error as an object on stdout too, for scripts that parse stdout only."""
        self.json({"error": True, "code": code, "name": name, "message": message})

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def error(self, text: str) -> None:
        self._stop_spinner()
        self.err.print(f"[red]error:[/] {escape(text)}")
