"""`sdedit batch`: SDEdit over a folder, resumable through a JSON-lines manifest, split across processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..control_images import DEFAULT_CONTROL_PREPROCESS
from ..devices import Offload
from ..families.control import FULL_WINDOW
from ..loading.controlnets import ControlSpec
from ..loading.ip_adapter import IPAdapterSpec
from ..errors import InputError, SdeditError
from ..files import check_output_folder, open_regular, printable, write_file
from ..images import IMAGE_SUFFIXES, Fit, open_image, png_bytes
from ..settings import DEFAULT_PRECISION, DEFAULT_STRENGTH_LEVELS, RunSettings
from ..tiling import check_tiling
from .common import fit_for, say

MANIFEST = "manifest"  # manifest.jsonl (one process) or manifest.<rank>.jsonl (several)


@dataclass(frozen=True)
class BatchJob:
    """Everything that decides an item's outputs besides the input itself (hashed into the manifest)."""

    model: str  # load_model source
    settings: RunSettings  # its seed is the batch seed: item seeds derive from (seed, file name)
    fit: Fit | None = None  # None: the default (crop) of pixel models; latent models take none
    original_size: bool = True  # outputs at the size of the input they edit (False: the model's)
    loras: tuple[str, ...] = ()  # PATH_OR_HUB_ID[:SCALE] each
    mask_grow: int = 0  # pixels
    mask_feather: int = 0  # pixels
    crop_to_mask: bool | int | None = None  # api.prepare_guide's: None = when the input is larger than the model
    strength_maps: bool = False  # the matched files are strength maps (per-pixel t0), not masks
    unmasked: str = "fail"  # an image without a mask in a masks folder: "fail" it, or "edit" it whole
    full_size: bool = False  # latent models: inputs over their area limit at their own size (api.prepare_guide)
    strength_levels: int = DEFAULT_STRENGTH_LEVELS  # strength maps with more grey levels are posterized
    controlnets: tuple[ControlSpec, ...] = ()  # ControlNets run beside the network
    control_window: tuple[float, float] = FULL_WINDOW  # (start, end) in the schedule's time
    control_images: tuple[Path, ...] = ()  # one file per ControlNet, the same for every item; none: each item steers
    control_preprocess: str = DEFAULT_CONTROL_PREPROCESS
    ip_adapters: tuple[IPAdapterSpec, ...] = ()  # IP-Adapters, each with its reference file (the same for every item)
    tile: int | str | None = None  # tiled SDEdit: tile size in pixels or 'auto' (api.prepare_guide)
    tile_overlap: int | None = None

    def digest(self) -> str:
        """A stable hash of what decides the outputs (batch size and precision of the arithmetic aside)."""
        s = self.settings
        key = {"model": self.model, **s.metadata(text_conditioned=True), "num": s.num_samples, "seed": s.seed,
               "fit": self.fit, "original_size": self.original_size}
        if self.loras:
            key["loras"] = list(self.loras)
        if self.mask_grow or self.mask_feather:
            key.update(mask_grow=self.mask_grow, mask_feather=self.mask_feather)
        if self.crop_to_mask is not None:
            key["crop_to_mask"] = self.crop_to_mask
        if self.strength_maps:
            key.update(strength_maps=True, strength_levels=self.strength_levels)
        if self.unmasked != "fail":
            key["unmasked"] = self.unmasked
        if self.full_size:
            key["full_size"] = True
        if self.controlnets:
            key.update(controlnets=[[c.source, c.scale, c.mode] for c in self.controlnets],
                       control_window=list(self.control_window), control_preprocess=self.control_preprocess,
                       control_images=[file_digest(p) for p in self.control_images])
        if self.tile is not None:
            key.update(tile=self.tile, tile_overlap=self.tile_overlap)
        if self.ip_adapters:
            key["ip_adapters"] = [[s.source, s.scale, file_digest(Path(s.image))] for s in self.ip_adapters]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Item:
    """One input image and what becomes of it."""

    name: str  # file name inside INPUT_DIR
    path: Path
    mask: Path | None = None
    error: str | None = None  # known bad before any work: no mask, an ambiguous mask, a name clash


def item_seed(seed: int, name: str) -> int:
    """The seed of an item, from (seed, file name) only: order, batching and workers do not change it."""
    key = str(seed).encode() + b"\0" + os.fsencode(name)  # the name's bytes: any file name, UTF-8 or not
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_folders(input_dir: Path, output_dir: Path, mask_dir: Path | None, what: str = "mask") -> None:
    """Refuse an output folder that is, contains or lies inside an input or mask folder (what: 'mask' or
    'strength map')."""
    if not input_dir.is_dir():
        raise InputError(f"input folder not found: {input_dir}")
    if mask_dir is not None and not mask_dir.is_dir():
        raise InputError(f"{what} folder not found: {mask_dir}")
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output {output_dir} exists and is not a folder")
    out = output_dir.resolve()
    for kind, d in (("input", input_dir), (what, mask_dir)):
        if d is None:
            continue
        src = d.resolve()
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise InputError(f"the output folder {output_dir} must not be, contain or lie inside the {kind} "
                             f"folder {d}")


UNMASKED = ("fail", "edit")  # what becomes of an image that has no mask in the masks folder


def list_items(input_dir: Path, mask_dir: Path | None, what: str = "mask", unmasked: str = "fail") -> list[Item]:
    """The images of INPUT_DIR (top level, sorted by name) with their masks matched by file stem; an image without
    one fails (saying so, or that it is no readable image) or, with unmasked="edit", is edited whole."""
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    masks: dict[str, list[Path]] = {}
    if mask_dir is not None:
        for m in mask_dir.iterdir():
            if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES:
                masks.setdefault(m.stem, []).append(m)
    items = []
    stems: dict[str, str] = {}
    for p in files:
        found = masks.get(p.stem, [])
        item = Item(p.name, p, found[0] if len(found) == 1 else None)
        if p.stem in stems:
            item.error = f"same name stem as {stems[p.stem]}: their outputs would collide; rename one"
        elif mask_dir is not None and not found and unmasked != "edit":
            item.error = _unreadable(p) or f"no {what} named {p.stem}.* in {mask_dir} (--unmasked edit edits such " \
                                           f"images whole)"
        elif len(found) > 1:
            item.error = f"several {what}s named {p.stem}.* in {mask_dir}: {', '.join(sorted(m.name for m in found))}"
        stems.setdefault(p.stem, p.name)
        items.append(item)
    return items


def _unreadable(path: Path) -> str | None:
    """Why an input cannot be used as an image (the project's own decoder and checks), or None if it can."""
    try:
        open_image(path)
    except SdeditError as e:
        return f"not a readable image: {e}"
    return None


def output_names(item: Item, num: int) -> list[str]:
    """Outputs are named after the input: stem.png, or stem_0.png ... for several samples."""
    stem = Path(item.name).stem
    return [f"{stem}.png"] if num == 1 else [f"{stem}_{j}.png" for j in range(num)]


class Manifest:
    """Append-only JSON lines, one per finished or failed item; the last line per input wins."""

    def __init__(self, folder: Path, rank: int, world: int):
        self.folder = folder
        self.path = folder / (f"{MANIFEST}.jsonl" if world == 1 else f"{MANIFEST}.{rank}.jsonl")
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped = 0  # lines that are no record of this tool's (cut by a kill, or edited by hand): ignored
        for p in sorted(folder.glob(f"{MANIFEST}*.jsonl")):
            self._read(p)

    def _read(self, path: Path) -> None:
        # never through a symlink or into a FIFO planted under a manifest's name (files.open_regular)
        with os.fdopen(open_regular(path, os.O_RDWR if path == self.path else os.O_RDONLY), "r+b" if path == self.path
                       else "rb") as f:
            data = f.read()
            if data and not data.endswith(b"\n") and path == self.path:
                # a line cut by a kill: drop it, so that the next append starts on a line of its own
                f.truncate(data.rfind(b"\n") + 1)
                data = data[: data.rfind(b"\n") + 1]
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                self.skipped += 1  # a cut line from a killed process in another rank's file, or not ours
                continue
            if well_formed(rec):
                self.records[rec["input"]] = rec
            else:
                self.skipped += 1

    def written_by_us(self, name: str, folder: Path) -> bool:
        """Whether the file `name` in folder is exactly what this batch wrote there (name and bytes recorded)."""
        recorded = {out.get("sha256") for rec in self.records.values() for out in rec.get("outputs", [])
                    if out.get("file") == name}
        path = folder / name
        return bool(recorded) and path.is_file() and not path.is_symlink() and file_digest(path) in recorded

    def append(self, record: dict[str, Any]) -> None:
        """Add one record durably (flushed and fsynced before returning)."""
        self.records[record["input"]] = record
        with os.fdopen(open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def well_formed(rec: Any) -> bool:
    """Whether a manifest line is a record of the shape this tool writes (anything else is ignored, not trusted)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("input"), str) or not isinstance(rec.get("status"), str):
        return False
    if any(key in rec and not isinstance(rec[key], str) for key in ("params", "input_sha256")):
        return False
    outputs = rec.get("outputs", [])
    return isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("sha256"), str)
                                             and isinstance(o.get("file"), str) and Path(o["file"]).name == o["file"]
                                             and o["file"] not in ("", ".", "..") and "\0" not in o["file"]
                                             and len(os.fsencode(o["file"])) <= MAX_NAME_BYTES for o in outputs)


def is_done(rec: dict[str, Any] | None, input_sha: str, params: str, folder: Path) -> bool:
    """Whether a record says this exact input and parameters finished, with its outputs still intact."""
    if not rec or rec.get("status") != "done" or rec.get("input_sha256") != input_sha or rec.get("params") != params:
        return False
    try:
        return all((folder / o["file"]).is_file() and file_digest(folder / o["file"]) == o["sha256"]
                   for o in rec.get("outputs", []))
    except OSError:  # unreadable now: not done, the item is redone (and its file refused if it is not ours)
        return False


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the output folder itself for one batch run (flock: released when the process ends,
    even by kill -9, and no lock file is left behind)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise InputError(f"cannot lock the output folder {printable(folder)}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another sdedit batch is writing to {printable(folder)}; wait for it to finish or "
                             f"choose another output folder") from None
        yield
    finally:
        os.close(fd)


def remove_stray_temporaries(folder: Path, outputs: set[str]) -> int:
    """Delete the temporary files our atomic writes of this batch's outputs left behind when killed: regular files
    named exactly as files.write_file names them ('.NAME.XXXXXXXX.tmp', NAME one of `outputs`); hold the lock."""
    n = 0
    for p in folder.iterdir():
        m = STRAY.fullmatch(p.name)
        if m and m.group(1) in outputs and p.is_file() and not p.is_symlink():
            p.unlink()
            n += 1
    return n


MAX_NAME_BYTES = 255  # the longest file name the usual file systems take

STRAY = re.compile(r"\.(.+?\.png)\.(?:sdedit-[0-9]{1,7}\.)?[a-z0-9_]{8}\.tmp")  # files.TEMPORARY of PNGs (fullmatch)


class StopRequest:
    """First Ctrl-C: finish the current group of items, then stop; second: stop at once (KeyboardInterrupt)."""

    def __init__(self, say: Callable[[str], None]):
        self.requested = False
        self.say = say
        self.previous: Any = None

    def __enter__(self) -> StopRequest:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.say("stopping after the current items (the batch being computed; Ctrl-C again to stop now)")


@dataclass
class Summary:
    """Counts of one run of one process."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)


def group_items(items: list[Item], size: int) -> list[list[Item]]:
    """Consecutive items in groups of `size`: the unit of network batches, fixed by the sorted item list alone."""
    return [items[i:i + size] for i in range(0, len(items), size)]


EditGroup = Callable[[list[Item], dict[str, int]], dict[str, "list[Any] | SdeditError"]]


def run_groups(groups: list[list[Item]], job: BatchJob, outdir: Path, manifest: Manifest, edit_group: EditGroup, *,
               stop: StopRequest | None = None, advance: Callable[[int], None] | None = None) -> Summary:
    """Edit each group's items not already done; record every outcome; stop cleanly (between groups) when asked.

    A group is always computed whole, items done before included (their files are not rewritten):
    the network then sees the same batches whatever was finished before a kill, or which process
    took the group, so the outputs are the same bytes.
    """
    summary = Summary()
    start = time.perf_counter()
    digest = job.digest()

    def fail(item: Item, reason: str, record: dict[str, Any] | None = None) -> None:
        summary.failed += 1
        summary.failures.append((item.name, reason))
        manifest.append({**(record or {"input": item.name, "params": digest}), "status": "failed", "reason": reason})

    for group in groups:
        if stop is not None and stop.requested:
            summary.interrupted = True
            break
        t = time.perf_counter()
        members: list[tuple[Item, str, bool]] = []  # item, input sha256, still to do
        for item in group:
            try:
                sha = file_digest(item.path)
            except OSError as e:
                fail(item, f"cannot read: {e}")
                continue
            pending = not is_done(manifest.records.get(item.name), sha, digest, outdir)
            if item.error is not None:
                fail(item, item.error, {"input": item.name, "input_sha256": sha, "params": digest})
                continue
            members.append((item, sha, pending))
        pending = [(item, sha) for item, sha, todo in members if todo]
        summary.skipped += len(members) - len(pending)
        if pending:
            seeds = {item.name: item_seed(job.settings.seed or 0, item.name) for item, _, _ in members}
            try:
                results = edit_group([item for item, _, _ in members], seeds)
            except SdeditError:  # one item spoiled the batch (NaN, say): redo the pending ones alone to find it
                results = {}
                for item, _ in pending:
                    try:
                        results.update(edit_group([item], seeds))
                    except SdeditError as e:
                        results[item.name] = e
            seconds = round(time.perf_counter() - t, 3)
            for item, sha in pending:
                record: dict[str, Any] = {"input": item.name, "input_sha256": sha, "params": digest,
                                          "seed": seeds[item.name]}
                try:
                    outcome = results[item.name]
                    if isinstance(outcome, SdeditError):
                        raise outcome
                    names = output_names(item, job.settings.num_samples)
                    for n in names:
                        target = outdir / n
                        if os.path.lexists(target) and not manifest.written_by_us(n, outdir):
                            raise InputError(f"{target} exists and was not written by this batch as it is now "
                                             f"(someone else's file, or changed since); not overwriting it")
                    encoded = [png_bytes(img) for img in outcome]
                    outputs = [{"file": n, "sha256": hashlib.sha256(data).hexdigest()}
                               for n, data in zip(names, encoded, strict=True)]
                    # Intent first: a kill after a file is published but before "done" is recorded leaves a file
                    # this batch recognises by its hash, so the rerun redoes the item and replaces it.
                    record["outputs"] = outputs  # kept by a "failed" record too, if a write fails half-way
                    manifest.append({**record, "status": "writing"})
                    for n, data in zip(names, encoded, strict=True):
                        write_file(outdir / n, lambda f, data=data: f.write(data), overwrite=True)  # atomic
                    record.update(status="done", seconds=seconds)
                    summary.done += 1
                    manifest.append(record)
                except SdeditError as e:
                    fail(item, str(e), record)
        if advance is not None:
            advance(len(group))
    summary.seconds = time.perf_counter() - start
    return summary


@dataclass(frozen=True)
class Distributed:
    """This process's share of the work: rank, world size and device (accelerate/torchrun set the environment)."""

    rank: int
    world: int
    device: str | None
    wait: Callable[[], None]  # barrier; a no-op for one process


def distributed(device: str | None) -> Distributed:
    """Join the process group when launched by `accelerate launch` or torchrun; else a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(0, 1, device, lambda: None)
    import torch
    from accelerate import PartialState

    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    state = PartialState(cpu=not cuda)
    return Distributed(state.process_index, state.num_processes, str(state.device) if cuda else "cpu",
                       state.wait_for_everyone)


def totals(outdir: Path, items: list[Item], job: BatchJob) -> dict[str, int]:
    """Counts over every process's manifest: items done with these parameters, failed, and not yet done."""
    records = Manifest(outdir, 0, 1).records
    digest = job.digest()
    done = sum(1 for i in items if records.get(i.name, {}).get("status") == "done"
               and records[i.name].get("params") == digest)
    failed = sum(1 for i in items if records.get(i.name, {}).get("status") == "failed")
    return {"done": done, "failed": failed, "pending": len(items) - done - failed}


def run_folder(input_dir: Path, output_dir: Path, mask_dir: Path | None, job: BatchJob, *,
               config: str | None, device: str | None, quiet: bool, threads: int = 1, offload: Offload = "none") -> int:
    """The `sdedit batch` command: exit 0 all done, 1 some item failed, 130 stopped by Ctrl-C.

    On a CPU each process computes with `threads` threads: CPU kernels round differently with
    other thread counts, so a fixed count keeps the files identical whatever the number of
    processes; use more processes (torchrun) rather than more threads to use more cores.
    """
    from ..loader import load_model

    what = "strength map" if job.strength_maps else "mask"
    check_folders(input_dir, output_dir, mask_dir, what)
    if job.unmasked not in UNMASKED:
        raise InputError(f"--unmasked must be one of {', '.join(UNMASKED)}, got {job.unmasked!r}")
    dist = distributed(device)
    items = list_items(input_dir, mask_dir, what, job.unmasked)
    if not items:
        raise InputError(f"no images in {input_dir} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    model = load_model(job.model, config=config, device=dist.device, loras=job.loras, offload=offload,
                       precision=job.settings.precision or DEFAULT_PRECISION, controlnets=job.controlnets,
                       control_window=job.control_window, ip_adapters=job.ip_adapters)
    model.check_conditioning(job.settings)
    fit_for(model, job.fit)  # refused before the output folder is made
    if job.tile is not None:
        check_tiling(model, job.tile, job.tile_overlap)
    check_output_folder(output_dir)  # only once the settings and the model are known to be good
    with ExitStack() as held:
        if dist.rank == 0:
            held.enter_context(folder_lock(output_dir))  # one batch per folder; the ranks of one run share it
            remove_stray_temporaries(output_dir, {n for item in items
                                                  for n in output_names(item, job.settings.num_samples)})
        dist.wait()
        return _run_locked(items, job, output_dir, model, dist, quiet, threads)


def _run_locked(items: list[Item], job: BatchJob, output_dir: Path, model: Any, dist: Distributed, quiet: bool,
                threads: int) -> int:
    """This process's share of the groups, with the output folder's lock held by rank 0."""
    from ..progress import tqdm

    from ..api import iter_edits, prepare_guide

    settings = job.settings
    fit = fit_for(model, job.fit)
    groups = group_items(items, max(1, settings.batch_size // settings.num_samples))
    mine = groups[dist.rank::dist.world]
    manifest = Manifest(output_dir, dist.rank, dist.world)
    if manifest.skipped:
        say(f"sdedit batch: {manifest.skipped} manifest line(s) are not records of this tool (cut by a kill or "
            "edited): ignored, their items are redone", err=True)
    if model.device.type == "cpu":
        import torch

        torch.set_num_threads(threads)

    def edit_group(group: list[Item], seeds: dict[str, int]) -> dict[str, list[Any] | SdeditError]:
        results: dict[str, list[Any] | SdeditError] = {}
        guides, order = [], []
        for item in group:
            try:
                image = open_image(item.path)
                matched = open_image(item.mask) if item.mask is not None else None
                mask, strength = (None, matched) if job.strength_maps else (matched, None)
                grow = (job.mask_grow, job.mask_feather) if mask is not None else (0, 0)  # nothing to grow unmasked
                guides.append(prepare_guide(model, image, mask, fit=fit, original_size=job.original_size,
                                            mask_grow=grow[0], mask_feather=grow[1],
                                            crop_to_mask=job.crop_to_mask if matched is not None else None,
                                            strength_map=strength,
                                            full_size=job.full_size, strength_levels=job.strength_levels,
                                            control_images=job.control_images,
                                            control_preprocess=job.control_preprocess, tile=job.tile,
                                            tile_overlap=job.tile_overlap))
                order.append(item)
            except SdeditError as e:  # an unreadable input fails alone, and is in no batch
                results[item.name] = e
        outputs = iter(iter_edits(model, guides, [seeds[item.name] for item in order], settings, fit=fit,
                                  progress=False))
        for item in order:
            results[item.name] = [next(outputs) for _ in range(settings.num_samples)]
        return results

    label = f"sdedit batch [{dist.rank + 1}/{dist.world}]" if dist.world > 1 else "sdedit batch"
    bar = tqdm(total=sum(len(g) for g in mine), desc=label, unit="item", disable=quiet, position=dist.rank)
    with StopRequest(lambda m: tqdm.write(printable(f"{label}: {m}"), file=sys.stderr)) as stop:
        summary = run_groups(mine, job, output_dir, manifest, edit_group, stop=stop, advance=bar.update)
    bar.close()
    for name, reason in summary.failures:
        say(f"{label}: failed: {name}: {reason}", err=True)
    rate = summary.done / summary.seconds if summary.seconds > 0 else 0.0
    say(f"{label}: done {summary.done}, skipped (done before) {summary.skipped}, failed {summary.failed}, "
        f"{summary.seconds:.1f} s, {rate:.2f} items/s" + (" (interrupted)" if summary.interrupted else ""))
    if not summary.interrupted:
        dist.wait()
    if dist.rank == 0:
        t = totals(output_dir, items, job)
        print(f"| items | done | failed | not done yet |\n| --- | --- | --- | --- |\n"
              f"| {len(items)} | {t['done']} | {t['failed']} | {t['pending']} |", flush=True)
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0
