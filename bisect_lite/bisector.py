"""`bisect-lite run`: bisect to the first divergent op, confirm it in isolation, minimise it, write a repro.

The flow (each step journalled, so `--resume` continues an interrupted run):
1. fix the inputs; the reference runs once on every intermediate tensor (spilled to disk), twice for determinism;
2. the target runs the whole model twice: a match ends the job, a difference between its two runs is reported;
3. binary search over cut points: a probe at cut k fetches the frontier at k (tensors made at or before k that
   are still needed later) and compares each with its reference value;
4. the culprit is extracted alone, fed with reference values; if it passes alone, a window of neighbours is grown
   until it fails and shrunk back by delta debugging;
5. with --all the search continues past each culprit on segments fed with reference values;
6. the repro's input shapes are shrunk while the target still fails, then the bundle is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite import __version__
from bisect_lite.cache import Cache, inputs_hash
from bisect_lite.compare import CompareConfig, Comparison, compare_outputs
from bisect_lite.engines.base import RunResult
from bisect_lite.engines.runner import DEFAULT_TIMEOUT, EngineRunner
from bisect_lite.errors import InputError
from bisect_lite.fsutil import is_inside
from bisect_lite.inputs import prepare_inputs, save_npz
from bisect_lite.journal import Journal
from bisect_lite.model import Model, extract, frontier, load_model, truncate
from bisect_lite.model.fusion import FusedGroup, describe_group, fusion_groups, group_of, optimized_ops
from bisect_lite.model.slicing import with_feed_shapes
from bisect_lite.reference import ReferenceValues
from bisect_lite.search import ProbeOutcome, Status, bisect_first_failure, ddmin, expected_probes, grow_window
from bisect_lite.search.shrink import shrink_dims

Events = Callable[[str, dict[str, Any]], None]
STATUS_WORD = {Status.PASS: "pass", Status.FAIL: "fail", Status.CRASH: "crash", Status.SKIP: "skip"}


@dataclass
class RunOptions:
    ref: str = "paddle"
    target: str = "fp16"
    inputs: Path | None = None
    shapes: Sequence[str] = ()
    seed: int = 0
    int_range: str | None = None
    out: Path = Path("bisect-out")
    find_all: bool = False
    compare: CompareConfig | None = None  # None: tolerances suited to the target's precision
    timeout: float = DEFAULT_TIMEOUT
    max_memory: int = 1 << 30
    cache: bool = True
    resume: bool = False
    minimise: bool = True
    verbose: bool = False
    max_culprits: int = 8
    params: Path | None = None
    force: bool = False  # replace the output of an earlier run in `out`
    # "bisect": cut the graph; "placement": keep it whole and move OpenCL ops back to the CPU (Paddle-Lite only)
    strategy: str = "bisect"


@dataclass
class Probe:
    """One target run on a cut model."""

    segment: int
    cut: int
    fetched: list[str]
    outcome: ProbeOutcome
    comparison: Comparison | None
    seconds: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        worst = self.comparison.worst() if self.comparison else None
        return {
            "segment": self.segment,
            "cut": self.cut,
            "fetched": self.fetched,
            "verdict": STATUS_WORD[self.outcome.status],
            "blame": self.outcome.blame,
            "metrics": [m.to_dict() for m in self.comparison.tensors] if self.comparison else [],
            "worst_rel_l2": _worst_error(self.comparison),
            "worst_tensor": worst.name if worst else None,
            "seconds": round(self.seconds, 4),
            "message": self.message,
        }


def _worst_error(cmp: Comparison | None) -> float | str | None:
    """The probe's worst rel L2; "inf" when NaN/Inf appeared where the reference is finite (JSON has no inf)."""
    if cmp is None:
        return None
    worst = 0.0
    for m in cmp.tensors:
        nonfinite = (m.nan_target or 0) > (m.nan_ref or 0) or (m.inf_target or 0) > (m.inf_ref or 0)
        if nonfinite or m.rel_l2 is None or not np.isfinite(m.rel_l2):
            if not m.passed:
                return "inf"
            continue
        worst = max(worst, float(m.rel_l2))
    return "inf" if cmp.missing else worst


class Bisector:
    def __init__(
        self,
        model: Model,
        options: RunOptions,
        ref: EngineRunner,
        target: EngineRunner,
        inputs: dict[str, np.ndarray],
        journal: Journal,
        events: Events | None = None,
    ) -> None:
        self.model = model
        self.opt = options
        self.ref = ref
        self.target = target
        self.inputs = inputs
        self.journal = journal
        self.events = events or (lambda kind, data: None)
        self.values = ReferenceValues(options.out / "reference", inputs)
        self.probes: list[Probe] = []
        self.groups: list[FusedGroup] | None = None  # the target's fused groups, when it can tell
        self.notes: list[str] = []
        self._segments: dict[int, Model] = {}

    # ---- probes -------------------------------------------------------------------------------------------
    def segment_model(self, start: int, targets: list[str]) -> Model:
        """The model computing `targets` from op `start` on; tensors made before `start` are fed (reference)."""
        if start == 0:
            return truncate(self.model, targets)
        if start not in self._segments:
            self._segments[start] = extract(self.model, range(start, len(self.model.ops)))
        return truncate(self._segments[start], targets)

    def _judge(
        self, result: RunResult, expected: dict[str, np.ndarray], names: list[str]
    ) -> tuple[ProbeOutcome, Comparison | None]:
        if not result.ok:
            return ProbeOutcome(Status.CRASH, detail=result.message), None
        cmp = compare_outputs(expected, result.outputs, self.opt.compare, names=names)
        if cmp.passed:
            return ProbeOutcome(Status.PASS), cmp
        producers = self.model.producers
        blame = min((producers.get(n, len(self.model.ops)) for n in cmp.failing), default=None)
        return ProbeOutcome(Status.FAIL, blame=blame), cmp

    def probe(self, start: int, cut: int) -> Probe:
        targets = [
            t for t in frontier(self.model, cut) if self.model.producers.get(t, -1) >= start and t in self.values
        ]
        if not targets:
            return Probe(start, cut, [], ProbeOutcome(Status.SKIP, detail="nothing to fetch"), None, 0.0)
        sub = self.segment_model(start, targets)
        t0 = time.perf_counter()
        result = self.target.run(sub, self.values.get_many(sub.feeds))
        outcome, cmp = self._judge(result, self.values.get_many(targets), targets)
        probe = Probe(start, cut, targets, outcome, cmp, time.perf_counter() - t0, result.message)
        self.probes.append(probe)
        self.journal.append({"type": "probe", **probe.to_dict()})
        self.events("probe", probe.to_dict())
        return probe

    def _replayed(self, start: int) -> dict[int, ProbeOutcome]:
        """Probes of this segment finished by an earlier, interrupted run (positions relative to `start`)."""
        known: dict[int, ProbeOutcome] = {}
        seen = {(p.segment, p.cut) for p in self.probes}  # made in this session (e.g. the whole segment)
        for e in self.journal.find(type="probe", segment=start):
            status = {v: k for k, v in STATUS_WORD.items()}[e["verdict"]]
            known[e["cut"] - start] = ProbeOutcome(status, blame=e.get("blame"), detail=e.get("message"))
            if (start, e["cut"]) in seen:
                continue
            self.probes.append(
                Probe(
                    start,
                    e["cut"],
                    e["fetched"],
                    known[e["cut"] - start],
                    _cmp_from(e),
                    e["seconds"],
                    e.get("message", ""),
                )
            )
        return known

    # ---- the search ---------------------------------------------------------------------------------------
    def search_segment(self, start: int, whole: ProbeOutcome) -> dict[str, Any] | None:
        """Find the first failing op at or after `start`, given the outcome of the whole segment."""
        n = len(self.model.ops)
        hunted = whole.status
        known = self._replayed(start)
        known.setdefault(n - 1 - start, whole)

        def relative(outcome: ProbeOutcome) -> ProbeOutcome:
            """Blame is an op index; the search works on positions relative to `start`."""
            if outcome.blame is None or outcome.blame < start:
                return outcome
            return ProbeOutcome(outcome.status, blame=outcome.blame - start, detail=outcome.detail)

        def probe(pos: int) -> ProbeOutcome:
            return relative(self.probe(start, start + pos).outcome)

        known = {p: relative(o) for p, o in known.items()}
        cuts = None
        if self.groups:
            # Cut only where the target's fused groups end: a cut inside a group undoes the fusion.
            cuts = sorted({g.last - start for g in self.groups if g.last >= start} | {n - 1 - start})
            known = {p: o for p, o in known.items() if p in cuts}
        self.events(
            "search", {"segment": start, "ops": n - start, "expected": expected_probes(len(cuts or range(n - start)))}
        )
        result = bisect_first_failure(n - start, probe, failing=hunted, known=known, cuts=cuts)
        self.notes.extend(result.contradictions)
        self.notes.extend(getattr(result, "notes", []) or [])
        if result.first_bad is None:
            self.notes.append(f"segment from op {start}: the search could not locate a failing op")
            return None
        culprit = start + result.first_bad
        lo, hi = (start + result.culprit_range[0], start + result.culprit_range[1])
        info: dict[str, Any] = {
            "index": lo,
            "ops": list(range(lo, hi + 1)),
            "segment": start,
            "status": STATUS_WORD[hunted],
            "flaky": result.flaky,
            "linear_refined": result.linear_refined,
        }
        if result.ambiguous:
            a, b = (start + result.ambiguous[0], start + result.ambiguous[1])
            info["ambiguous"] = [a, b]
            self.notes.append(f"probes between ops {a} and {b} could not be evaluated; the culprit is in that range")
        if hi > lo and self.groups:
            group = group_of(self.groups, culprit)
            if group is not None and group.ops == info["ops"]:
                info["group"] = describe_group(self.model, group)
        info["fusion_note"] = self.fusion_change(culprit)
        return info

    def placement_search(self, whole: ProbeOutcome) -> dict[str, Any] | None:
        """Keep the graph whole; move the first k OpenCL ops to the CPU (OPENCL_MEMORY_CONFIG_FILE) and binary-search
        the smallest k that fixes the output: op k is the culprit. No cut changes any fusion."""
        engine = self.target.engine
        place = getattr(engine, "place_on_cpu", None)
        if place is None or getattr(engine, "place", None) != "opencl":
            raise InputError("--strategy placement needs a Paddle-Lite OpenCL target (e.g. --target lite:opencl)")
        optimized = self.target.optimized_program(self.model)
        assert optimized is not None
        gpu = [op for op in optimized_ops(optimized) if op.place == "opencl"]
        if not gpu:
            self.notes.append("the target places no op on OpenCL: nothing to move back to the CPU")
            return None
        config_dir = self.opt.out / "placement"
        config_dir.mkdir(exist_ok=True)
        expected = self.values.get_many(self.model.fetches)
        inputs = self.values.get_many(self.model.feeds)

        def probe(k: int) -> ProbeOutcome:
            moved = gpu[: k + 1]
            config = config_dir / f"cpu-first-{k + 1}.txt"
            lines = [f"{op.type}:{','.join(op.inputs)}:{','.join(op.outputs)}" for op in moved]
            config.write_text("device:cpu\n" + "\n".join(lines) + "\n")
            place(config)
            t0 = time.perf_counter()
            try:
                placed = self.target.optimized_program(self.model)
                still = (
                    [
                        op.type
                        for op in optimized_ops(placed)
                        if op.place == "opencl" and set(op.outputs) & {t for m in moved for t in m.outputs}
                    ]
                    if placed
                    else []
                )
                if still:
                    outcome, cmp, message = ProbeOutcome(Status.SKIP), None, f"placement ignored for {still}"
                else:
                    result = self.target.run(self.model, inputs)
                    judged, cmp = self._judge(result, expected, list(self.model.fetches))
                    # Hunted status: "fixed". FAIL here means the output is right once ops 0..k left the GPU.
                    fixed = judged.status == Status.PASS
                    outcome = ProbeOutcome(Status.FAIL if fixed else Status.PASS)
                    message = "fixed" if fixed else (result.message or "still wrong")
            finally:
                place(None)
            record = Probe(-1, k, [op.outputs[0] for op in moved[-1:]], outcome, cmp, time.perf_counter() - t0, message)
            self.probes.append(record)
            self.journal.append({"type": "probe", **record.to_dict()})
            self.events("probe", record.to_dict())
            return outcome

        self.events("search", {"segment": -1, "ops": len(gpu), "expected": expected_probes(len(gpu))})
        everything = probe(len(gpu) - 1)
        if everything.status != Status.FAIL:
            self.notes.append(
                f"moving all {len(gpu)} OpenCL ops to the CPU does not fix the output "
                "(or the placement did not take effect): the fault is not in one OpenCL kernel"
            )
            return None
        result = bisect_first_failure(len(gpu), probe, failing=Status.FAIL, known={len(gpu) - 1: everything})
        self.notes.extend(result.contradictions)
        if result.first_bad is None:
            return None
        culprit_op = gpu[result.first_bad]
        group = next(
            (g for g in self.groups or [] if g.optimized and set(g.optimized.outputs) & set(culprit_op.outputs)), None
        )
        if group is None:
            producers = [self.model.producers[t] for t in culprit_op.outputs if t in self.model.producers]
            if not producers:
                self.notes.append(f"the culprit {culprit_op.type} -> {culprit_op.outputs} has no original op")
                return None
            ops = [min(producers)]
        else:
            ops = group.ops
        self.notes.append(
            f"placement search: moving OpenCL op #{result.first_bad} ({culprit_op.type} -> "
            f"{', '.join(culprit_op.outputs)}) and the ones before it to the CPU fixes the output"
        )
        info: dict[str, Any] = {
            "index": ops[0],
            "ops": ops,
            "segment": 0,
            "status": STATUS_WORD[whole.status],
            "flaky": result.flaky,
            "linear_refined": result.linear_refined,
        }
        if len(ops) > 1 and group is not None:
            info["group"] = describe_group(self.model, group)
        return info

    def fusion_groups(self) -> list[FusedGroup] | None:
        """The target's fused groups for the whole model, from its optimised program (None: no such view)."""
        try:
            optimized = self.target.optimized_program(self.model)
        except (RuntimeError, InputError) as exc:
            self.notes.append(f"could not read the target's optimised program ({exc}); cutting at every op")
            return None
        if optimized is None:
            return None
        groups = fusion_groups(self.model, optimized)
        fused = [g for g in groups if len(g.ops) > 1]
        if fused:
            self.notes.append(f"the target fuses {len(fused)} groups of ops; probes cut only between groups")
        return groups

    def fusion_change(self, culprit: int) -> str | None:
        """Compare the fusion around the culprit in the whole model and in the failing probe's cut model."""
        if not self.groups:
            return None
        full = group_of(self.groups, culprit)
        try:
            cut_model = truncate(self.model, [t for t in frontier(self.model, culprit) if t in self.values])
            optimized = self.target.optimized_program(cut_model)
        except (RuntimeError, InputError):
            return None
        if optimized is None or full is None:
            return None
        cut_groups = fusion_groups(cut_model, optimized)
        names = {t for i in full.ops for t in self.model.ops[i].data_outputs()}
        mine = next(
            (g for g in cut_groups if names & {t for i in g.ops for t in cut_model.ops[i].data_outputs()}), None
        )
        if mine is None or set(mine.internal) == set(full.internal):
            return None
        return (
            f"cutting after op {culprit} changed the fusion around it: in the whole model "
            f"{describe_group(self.model, full)}, in the cut model {describe_group(cut_model, mine)}"
        )

    # ---- isolation ----------------------------------------------------------------------------------------
    def isolate(
        self,
        ops: Sequence[int],
        hunted: Status,
        model: Model | None = None,
        inputs: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Any] | None:
        """Run ops alone, fed with reference values; None when the reference cannot run them."""
        sub = model or extract(self.model, ops)
        if inputs is None and any(f not in self.values for f in sub.feeds):
            return None  # fed by a tensor the reference cannot return
        feeds = inputs or self.values.get_many(sub.feeds)
        ref = self.ref.run(sub, feeds)
        if not ref.ok:
            return None
        tgt = self.target.run(sub, feeds)
        outcome, cmp = self._judge(tgt, ref.outputs, list(sub.fetches))
        fails = outcome.status == hunted
        return {
            "model": sub,
            "inputs": feeds,
            "expected": ref.outputs,
            "actual": tgt.outputs,
            "fails": fails,
            "comparison": cmp,
            "status": STATUS_WORD[outcome.status],
            "message": tgt.message,
            "ops": list(ops),
        }

    def confirm(self, culprit_ops: list[int], hunted: Status, start: int) -> dict[str, Any]:
        """The culprit op (or fused group) alone, else the smallest failing window, else the whole model."""
        n = len(self.model.ops)
        culprit = culprit_ops[0]
        tried: list[str] = []
        what = f"op {culprit}" if len(culprit_ops) == 1 else f"fused group ops {culprit}..{culprit_ops[-1]}"
        alone = self.isolate(culprit_ops, hunted)
        if alone and alone["fails"]:
            return {"kind": "op" if len(culprit_ops) == 1 else "group", **alone, "tried": tried}
        tried.append(
            f"{what} alone, fed with reference values: " + ("passes" if alone else "the reference cannot run it alone")
        )
        cache: dict[tuple[int, ...], dict[str, Any] | None] = {}

        def run_ops(ops: tuple[int, ...]) -> dict[str, Any] | None:
            if ops not in cache:
                try:
                    cache[ops] = self.isolate(list(ops), hunted)
                except InputError:
                    cache[ops] = None
            return cache[ops]

        def window_fails(lo: int, hi: int) -> bool | None:
            res = run_ops(tuple(range(start + lo, start + hi + 1)))
            return None if res is None else res["fails"]

        window = grow_window(culprit - start, n - start, window_fails)
        if window is None:
            tried.append(
                f"windows around op {culprit} up to ops {start}..{n - 1}: all pass when fed with reference values"
            )
            return {"kind": "context", "tried": tried, "ops": list(range(start, n))}
        ops = tuple(range(start + window[0], start + window[1] + 1))
        tried.append(f"smallest failing window: ops {ops[0]}..{ops[-1]}")
        minimal = ddmin(list(ops), lambda subset: (run_ops(tuple(subset)) or {}).get("fails"), max_calls=40)
        best = run_ops(tuple(minimal.items)) or run_ops(ops)
        assert best is not None
        tried.append(f"delta debugging kept ops {list(minimal.items)} ({minimal.calls} runs)")
        return {"kind": "op" if len(best["ops"]) == 1 else "subgraph", **best, "tried": tried}

    # ---- shape minimisation -------------------------------------------------------------------------------
    def minimise_shapes(self, found: dict[str, Any], hunted: Status) -> dict[str, Any]:
        sub: Model = found["model"]
        feeds: dict[str, np.ndarray] = found["inputs"]
        names = list(sub.feeds)
        dims = [d for n in names for d in feeds[n].shape]
        if not dims:
            return found
        ranks = [feeds[n].ndim for n in names]
        attempts: dict[tuple[int, ...], dict[str, Any] | None] = {}

        def split(flat: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
            out, i = {}, 0
            for name, rank in zip(names, ranks, strict=True):
                out[name] = flat[i : i + rank]
                i += rank
            return out

        def fails(flat: tuple[int, ...]) -> bool | None:
            shapes = split(flat)
            cropped = {n: np.ascontiguousarray(feeds[n][tuple(slice(0, d) for d in shapes[n])]) for n in names}
            try:
                model = with_feed_shapes(sub, shapes)
            except InputError:
                return None
            res = self.isolate(found["ops"], hunted, model=model, inputs=cropped)
            attempts[flat] = res
            return None if res is None else res["fails"]

        shrunk = shrink_dims(dims, fails, max_calls=30)
        final = tuple(shrunk.dims)
        if final == tuple(dims) or not (attempts.get(final) or {}).get("fails"):
            return found
        best = attempts[final]
        assert best is not None
        note = ", ".join(
            f"{n} {list(feeds[n].shape)} -> {list(best['inputs'][n].shape)}"
            for n in names
            if feeds[n].shape != best["inputs"][n].shape
        )
        return {**found, **best, "kind": found["kind"], "tried": [*found.get("tried", []), f"shrunk inputs: {note}"]}


def _cmp_from(entry: dict[str, Any]) -> Comparison | None:
    from bisect_lite.compare import TensorMetrics

    if not entry.get("metrics"):
        return None
    return Comparison(tensors=[TensorMetrics.from_dict(m) for m in entry["metrics"]])


# ---- the job ----------------------------------------------------------------------------------------------------
def prepare_out_dir(out: Path, model: Model, resume: bool, force: bool = False) -> None:
    if model.source is not None and is_inside(out, model.source):
        raise InputError(f"--out {out} is inside the model directory {model.source}; bisect-lite never writes there")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} exists and is not a directory")
        has_journal = (out / "journal.jsonl").exists()
        if force and not resume:
            if not has_journal and any(out.iterdir()):
                raise InputError(f"--force: {out} is not the output of an earlier run; refusing to delete it")
            _remove_tree(out)
        if resume and not has_journal:
            raise InputError(f"--resume: {out} holds no journal of an earlier run")
        if not resume and out.exists() and any(out.iterdir()):
            hint = (
                "use --resume to continue it or --force to replace it"
                if has_journal
                else "choose an empty or new --out"
            )
            raise InputError(f"--out {out} is not empty ({hint})")
    elif resume:
        raise InputError(f"--resume: {out} does not exist")
    out.mkdir(parents=True, exist_ok=True)


def run_bisect(model_path: Path, options: RunOptions, events: Events | None = None) -> dict[str, Any]:
    """The whole `run` job; returns the report (also written to OUT/report.json and OUT/report.md)."""
    from bisect_lite.report.write import write_run_report
    from bisect_lite.repro.bundle import write_bundle

    emit = events or (lambda kind, data: None)
    t_start = time.perf_counter()
    if options.compare is None:
        from bisect_lite.engines.registry import default_tolerance

        options.compare = CompareConfig(default=default_tolerance(options.target))
    model = load_model(model_path, options.params)
    out = Path(options.out)
    prepare_out_dir(out, model, options.resume, options.force)
    journal = Journal(out / "journal.jsonl")
    header = journal.header()
    if options.resume:
        with np.load(out / "inputs.npz", allow_pickle=False) as data:
            inputs = {k: data[k] for k in data.files}
        if header and header["model"] != model.fingerprint:
            raise InputError(f"--resume: {out} was made for another model (fingerprint {header['model']})")
        if header and (header["ref"], header["target"]) != (options.ref, options.target):
            raise InputError(f"--resume: {out} was made with --ref {header['ref']} --target {header['target']}")
    else:
        inputs = prepare_inputs(
            model, options.inputs, shapes=options.shapes, seed=options.seed, int_range=options.int_range
        )
        save_npz(out / "inputs.npz", inputs)
    if header is None:
        journal.append(
            {
                "type": "start",
                "model": model.fingerprint,
                "ref": options.ref,
                "target": options.target,
                "inputs": inputs_hash(inputs),
                "tool": __version__,
            }
        )

    cache = Cache(results=options.cache)
    scratch = out / ".scratch"
    ref = EngineRunner(options.ref, cache, timeout=options.timeout, verbose=options.verbose, scratch=scratch)
    target = EngineRunner(options.target, cache, timeout=options.timeout, verbose=options.verbose, scratch=scratch)
    try:
        job = Bisector(model, options, ref, target, inputs, journal, emit)
        report = _run(job, model, options, emit)
        report["seconds"] = round(time.perf_counter() - t_start, 3)
        report["engine_seconds"] = round(ref.engine_seconds + target.engine_seconds, 3)
        report["target_runs"] = target.runs
        report["reference_runs"] = ref.runs
        report["target_cache_hits"] = target.cache_hits
        emit("phase", {"name": "repro", "detail": "writing repro bundles and the report"})
        found = report.pop("_found")
        for i, (_, entry) in enumerate(found):
            entry["repro"] = "repro" if i == 0 else f"repro-{i + 1}"
        # Bundles wait on paddle2onnx child processes: write them while this thread draws the report's plot.
        with ThreadPoolExecutor(max_workers=2) as pool:
            bundles = [
                pool.submit(write_bundle, out / entry["repro"], f, entry, ref, target, model, report["tolerance"])
                for f, entry in found
            ]
            write_run_report(out, report)
            for bundle in bundles:
                bundle.result()
        return report
    finally:
        ref.close()
        target.close()
        cache.close()
        job_values = locals().get("job")
        if job_values is not None:
            job_values.values.close()
        _remove_tree(scratch)


def _run(job: Bisector, model: Model, options: RunOptions, emit: Events) -> dict[str, Any]:
    n = len(model.ops)
    report: dict[str, Any] = {
        "tool": f"bisect-lite {__version__}",
        "model": str(model.source),
        "ops": n,
        "reference": {"engine": job.ref.spec, "facts": job.ref.facts()},
        "target": {"engine": job.target.spec, "facts": job.target.facts()},
        "inputs": "inputs.npz",
        "tolerance": _tolerance_dict(options.compare),
        "expected_probes": expected_probes(n),
        "op_types": [op.type for op in model.ops],
        "culprits": [],
        "_found": [],
        "notes": job.notes,
    }
    # 1. reference values of every tensor
    emit("phase", {"name": "reference", "detail": f"{job.ref.spec} on every tensor"})
    if not job.values.complete:
        job.values.compute(
            model, job.ref, options.max_memory, on_batch=lambda i, total: emit("batch", {"done": i, "total": total})
        )
    else:
        job.values.load_flags()
    report["reference_nondeterministic"] = bool(job.values.nondeterministic)
    if job.values.unobservable:
        job.notes.append(
            f"the reference cannot return {len(job.values.unobservable)} tensors "
            f"({', '.join(job.values.unobservable[:4])}); probes never compare them"
        )
    if job.values.nondeterministic:
        job.notes.append(
            f"the reference differs between two runs at {len(job.values.nondeterministic)} tensors "
            f"(first: {job.values.nondeterministic[0]}); its values are taken from the first run"
        )

    # 2. the target on the whole model, twice
    emit("phase", {"name": "target", "detail": f"{job.target.spec} on the whole model, twice"})
    expected = job.values.get_many(model.fetches)
    first = job.target.run(model, inputs := job.values.get_many(model.feeds))
    second = job.target.run(model, inputs, use_cache=False)
    whole, cmp = job._judge(first, expected, list(model.fetches))
    report["full_model"] = {
        "comparison": cmp.to_dict() if cmp else None,
        "status": first.status,
        "message": first.message,
    }
    nondet = first.ok and second.ok and any(not same_values(first.outputs[k], second.outputs[k]) for k in model.fetches)
    report["target_nondeterministic"] = bool(nondet)
    if nondet:
        job.notes.append(
            "the target gives different results on two runs of the same model (non-deterministic "
            "kernel or memory reuse); the search uses the first run"
        )
    if whole.status == Status.PASS:
        report["verdict"] = "match"
        report["probes"] = []
        report["search_probes"] = 0
        return report
    report["verdict"] = "crash" if whole.status == Status.CRASH else "mismatch"

    # 3-6. search, confirm, continue past each culprit with reference-fed segments
    job.groups = job.fusion_groups()
    start, outcome = 0, whole
    while True:
        found = job.placement_search(whole) if options.strategy == "placement" else job.search_segment(start, outcome)
        if found is None:
            break
        culprit = found["index"]
        emit("phase", {"name": "confirm", "detail": f"op {culprit} ({model.ops[culprit].type}) in isolation"})
        hunted = outcome.status
        confirmed = job.confirm(found["ops"], hunted, start)
        if len(confirmed.get("ops", [])) == 1 and confirmed["ops"][0] != culprit:
            found["index"] = culprit = confirmed["ops"][0]  # delta debugging pinned another op
        if options.minimise and confirmed["kind"] in ("op", "group", "subgraph"):
            emit("phase", {"name": "minimise", "detail": "shrinking input shapes"})
            confirmed = job.minimise_shapes(confirmed, hunted)
        entry = _culprit_entry(job, found, confirmed, nondet)
        report["culprits"].append(entry)
        if confirmed["kind"] != "context":
            report["_found"].append((confirmed, entry))
        last = max(found["ops"])
        if (
            options.strategy != "bisect"
            or not options.find_all
            or len(report["culprits"]) >= options.max_culprits
            or last >= n - 1
        ):
            break
        start = last + 1
        emit("phase", {"name": "continue", "detail": f"ops {start}..{n - 1} fed with reference values"})
        outcome = _segment_outcome(job, start)
        if outcome.status == Status.PASS:
            break
    report["probes"] = [p.to_dict() for p in job.probes]
    report["search_probes"] = sum(1 for p in job.probes if p.segment in (0, -1))  # -1: placement probes
    return report


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal results (NaN equals NaN: a deterministic NaN is not non-determinism)."""
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _segment_outcome(job: Bisector, start: int) -> ProbeOutcome:
    n = len(job.model.ops)
    for e in job.journal.find(type="probe", segment=start, cut=n - 1):
        status = {v: k for k, v in STATUS_WORD.items()}[e["verdict"]]
        return ProbeOutcome(status, blame=e.get("blame"))
    return job.probe(start, n - 1).outcome


def _culprit_entry(job: Bisector, found: dict[str, Any], confirmed: dict[str, Any], nondet: bool) -> dict[str, Any]:
    from bisect_lite.report.diagnose import diagnose

    model = job.model
    op = model.ops[found["index"]]
    cmp: Comparison | None = confirmed.get("comparison")
    worst = cmp.worst() if cmp else None
    ref_arr = tgt_arr = None
    if worst is not None:
        ref_arr = confirmed["expected"].get(worst.name)
        tgt_arr = confirmed["actual"].get(worst.name)
    depth = [
        (p.cut, float(e))
        for p in job.probes
        if p.segment == found["segment"] and (e := _worst_error(p.comparison)) is not None
    ]
    status = "crash" if found["status"] == "crash" else "ok"
    diag = diagnose(
        ref_arr,
        tgt_arr,
        status=status,
        metrics=worst,
        depth_errors=depth,
        culprit_index=found["index"],
        isolated_rel_l2=worst.rel_l2 if worst else None,
        nondeterministic=nondet,
        message=confirmed.get("message") or _last_message(job),
    )
    notes = list(confirmed.get("tried", []))
    if found.get("group"):
        notes.insert(0, f"the culprit lies inside a group the target fuses, {found['group']}: blamed the group")
    if found.get("fusion_note"):
        notes.append(found["fusion_note"])
    if found.get("flaky"):
        notes.append("a probe gave different answers when repeated (flaky target)")
    if found.get("linear_refined"):
        notes.append("probes contradicted each other (a cut changed the result); the bracket was refined linearly")
    return {
        "index": op.index,
        "type": op.type,
        "inputs": op.inputs,
        "outputs": op.outputs,
        "attrs": _json_safe(model.op_attrs(op.index)),
        "kind": confirmed["kind"],
        "ops": confirmed.get("ops", [op.index]),
        "diagnosis": diag.to_dict(),
        "repro": None,
        "isolated": cmp.to_dict() if cmp else None,
        "notes": notes,
        "status": found["status"],
        "ambiguous": found.get("ambiguous"),
    }


def _last_message(job: Bisector) -> str:
    """The newest engine message of the search (a crash's stderr tail), for the diagnosis."""
    for p in reversed(job.probes):
        if p.message:
            return p.message
    return ""


def _tolerance_dict(config: CompareConfig) -> dict[str, Any]:
    return {
        "atol": config.default.atol,
        "rtol": config.default.rtol,
        "allow_inf": config.allow_inf,
        "check_error_stat": config.check_error_stat,
        "scale_atol": config.scale_atol,
        "overrides": {k: {"atol": v.atol, "rtol": v.rtol} for k, v in config.overrides.items()},
    }


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
