"""ONNX export of a run, and prediction through ONNX Runtime.

    fusescope export RUN --out model.onnx      writes model.onnx and model.onnx.json

The ONNX graph takes one float32 input per modality of the run, named as in the run's config
(`rgb`, `depth`, ...), shape (batch, channels, height, width) with dynamic batch, height and
width, **already normalised** (the normalisation is not baked in); it outputs `logits`
(batch, classes, height, width) at the input resolution. How to normalise is written beside the
model as JSON (`model.onnx.json`, also embedded in the ONNX metadata under `fusescope`): per
channel `(x - mean) / std` after decoding each file as the run's data meta says (images in
[0, 1], depth in metres), with depth holes (0) set to 0 after normalisation. Keeping the
normalisation outside the graph lets a deployment feed frames it has already normalised, and
lets a missing modality be fed as zeros (the fill `fusescope.engine.missing` uses).

The exporter is torch's TorchScript-based one (`dynamo=False`) at opset `OPSET`: it handles the
data-dependent interpolation sizes of the decoders with dynamic height and width; each export is
checked against PyTorch on two input sizes before the file is written (logits that are not
finite fail the check).

Integrity: the metadata holds the SHA-256 of the run's weights (`weights_sha256`: which run the
file belongs to) and of the graph itself, initializers included (`graph_sha256`), so `predict
--onnx` refuses a file whose weight bytes were changed, or another run's graph carrying copied
metadata, not only a file whose metadata names another run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from fusescope.console import warn
from fusescope.data.kinds import kind_of
from fusescope.engine.checkpoint import Run
from fusescope.engine.memory import check_fits, is_out_of_memory, out_of_memory_error
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, remove_stale_temps, write_json

OPSET = 17
# 2: the metadata holds graph_sha256 (files of format 1 are refused: export them again)
FORMAT = "fusescope-onnx/2"
# an export whose ONNX Runtime logits differ more than this from PyTorch's is refused
EXPORT_TOLERANCE = 1e-3


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx() -> None:
    if not onnx_available():
        raise FusescopeError(
            "ONNX export and --onnx need the onnx and onnxruntime packages: "
            "pip install 'fusescope[export]'"
        )


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, shapes and bytes): identifies the run an ONNX file
    was exported from, so that `predict RUN --onnx FILE` refuses a file of another run."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def graph_digest(proto) -> str:
    """SHA-256 of an ONNX model's graph: nodes, inputs, outputs and every initializer's bytes
    (not the model's metadata, which holds this digest)."""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this model cannot be exported with dynamic height and width (None if it can).

    A model may declare it with an `onnx_unsupported()` method; exporter failures are reported
    by `export_model` as well.
    """
    declared = getattr(model, "onnx_unsupported", None)
    return declared() if callable(declared) else None


def stream_outputs(model: nn.Module, modalities: list[str]) -> dict[str, str]:
    """modality -> ONNX output name of its stream's logits, for a model whose scored logits
    combine its streams' (`scores_streams`; with a modality absent only the present streams are
    combined, `combine_present`). The graph returns them beside `logits`, so `predict --onnx`
    with a modality left out applies the PyTorch model's own rule to them (`OnnxSegmentor`).
    Empty for other models (every model core has a `combine_present`; only these use it)."""
    if not getattr(model, "scores_streams", False) or len(modalities) < 2:
        return {}
    return {m: f"logits_{m}" for m in modalities}


class _LogitsGraph(nn.Module):
    """The traced function: one tensor per modality in; the scored logits out, then each
    stream's logits where `stream_outputs` names them."""

    def __init__(self, model: nn.Module, modalities: list[str]):
        super().__init__()
        self.model = model
        self.modalities = list(modalities)
        self.streams = list(stream_outputs(model, self.modalities))

    def output_names(self) -> list[str]:
        return ["logits", *stream_outputs(self.model, self.modalities).values()]

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.model(dict(zip(self.modalities, inputs, strict=True)))
        if not self.streams:
            return out["logits"]
        return (out["logits"], *(out["per_modality"][m] for m in self.streams))


def describe(run: Run) -> dict:
    """What a deployment needs beside the graph: inputs, normalisation, classes, provenance."""
    modalities = {}
    for name in run.model.modalities:
        spec = run.meta.modalities[name]
        kind = kind_of(spec)  # how its files decode (fusescope.data.kinds)
        modalities[name] = {
            "kind": spec.kind,
            "channels": spec.channels,
            "decode": kind.describe,
            **({f"scale_{kind.unit}_per_unit": spec.scale} if spec.scale and kind.unit else {}),
            "mean": run.stats[name]["mean"],
            "std": run.stats[name]["std"],
            "holes": f"{spec.kind} 0 (no reading) stays 0 after normalisation"
            if kind.holes
            else None,
        }
    return {
        "format": FORMAT,
        "opset": OPSET,
        "run": str(run.path.name),
        "method": str(run.cfg.model.name),
        "step": run.step,
        "max_steps": int(run.cfg.train.max_steps),
        "finished": run.finished,
        "weights_sha256": weights_digest(run.model),
        "inputs": "one float32 (N, C, H, W) tensor per modality, normalised: (x - mean) / std",
        "output": "logits (N, num_classes, H, W)",
        # with a modality absent, combine only these present streams' logits (the model's rule)
        "stream_outputs": stream_outputs(run.model, list(run.model.modalities)),
        "modalities": modalities,
        "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in run.meta.classes],
    }


def export_model(
    model: nn.Module,
    modalities: list[str],
    channels: dict[str, int],
    out: str | os.PathLike,
    size: tuple[int, int] = (64, 80),
    metadata: dict | None = None,
    progress: bool = False,
) -> float:
    """Export `model` (eval mode) to ONNX at `out` with dynamic batch, height and width.

    The export is run through ONNX Runtime at two sizes and compared with PyTorch before the
    file is moved into place (`progress`: a bar over the trace and the two checks, on stderr).

    Returns:
        The largest absolute logit difference between ONNX Runtime and PyTorch.

    Raises:
        FusescopeError: the model cannot be exported (one line saying why), or the exported
            graph disagrees with PyTorch.
    """
    _require_onnx()
    import onnx

    out = Path(out)
    method = type(model).__name__
    reason = unsupported_reason(model)
    if reason:
        raise FusescopeError(f"{method} cannot be exported to ONNX: {reason}")
    graph = _LogitsGraph(model, modalities).eval()
    device = next(model.parameters()).device
    example = tuple(torch.randn(1, channels[m], *size, device=device) for m in modalities)
    dims = {0: "batch", 2: "height", 3: "width"}
    outputs = graph.output_names()
    bar = tqdm(total=3, desc="export: tracing", unit="step", disable=not progress, leave=False)
    with bar, atomic_path(out, suffix=".onnx") as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the tracer's notes on Python-side sizes
                torch.onnx.export(
                    graph,
                    example,
                    str(tmp),
                    input_names=list(modalities),
                    output_names=outputs,
                    opset_version=OPSET,
                    dynamo=False,
                    dynamic_axes={**{m: dims for m in modalities}, **dict.fromkeys(outputs, dims)},
                )
        except Exception as err:  # the exporter's own message, first line only
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise FusescopeError(f"{method} cannot be exported to ONNX: {first}") from None
        if metadata is not None:
            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            metadata = {**metadata, "graph_sha256": graph_digest(proto)}
            entry.key, entry.value = "fusescope", json.dumps(metadata)
            onnx.save(proto, str(tmp))
        bar.update()
        try:
            worst = check_against_torch(tmp, graph, modalities, channels, size, device, bar)
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            raise out_of_memory_error(
                err, f"checking {method}'s export at {size[0]}x{size[1]}", "--size"
            ) from None
        if worst > EXPORT_TOLERANCE:
            raise FusescopeError(
                f"{method}: ONNX Runtime logits differ from PyTorch's by "
                f"{worst:.3g} (> {EXPORT_TOLERANCE}); not written"
            )
    return worst


def check_against_torch(
    path: str | os.PathLike,
    graph: nn.Module,
    modalities: list[str],
    channels: dict[str, int],
    size: tuple[int, int],
    device: torch.device,
    bar: tqdm | None = None,
) -> float:
    """Largest |ONNX Runtime - PyTorch| logit difference on random inputs of two sizes (the
    export size and another, so a height or width baked in as a constant is caught); infinite
    where either gives a value that is not finite (a NaN is never "no difference").

    Raises:
        FusescopeError: PyTorch's own logits are not finite (NaN or infinite weights), or ONNX
            Runtime cannot run the graph (first line of its message).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in (size, (size[0] + 24, size[1] + 40)):
        if bar is not None:
            bar.set_description(f"export: checking {h}x{w} against PyTorch")
        xs = [torch.randn(2, channels[m], h, w, generator=gen) for m in modalities]
        with torch.no_grad():
            ref = graph(*(x.to(device) for x in xs))
        ref = [r.float().cpu().numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        feeds = {m: x.numpy() for m, x in zip(modalities, xs, strict=True)}
        try:
            got = session.run(None, feeds)  # every output: logits, then each stream's
        except Exception as err:  # ONNX Runtime's own failure, first line only
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise FusescopeError(
                f"the exported graph fails in ONNX Runtime at {h}x{w} (not written): {first}"
            ) from None
        if bar is not None:
            bar.update()
        for g, r in zip(got, ref, strict=True):
            if g.shape != r.shape:
                raise FusescopeError(f"ONNX output shape {g.shape} != PyTorch {r.shape}")
            if not np.isfinite(r).all():
                raise FusescopeError(
                    "the model's PyTorch logits are not finite (NaN or infinite weights?); "
                    "not exported"
                )
            diff = float(np.abs(g - r).max())
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def export_run(
    run: Run, out: str | os.PathLike, size: tuple[int, int] | None = None, progress: bool = False
) -> dict:
    """Export a loaded run to `out` (.onnx) and its description to `out` + `.json`, both or
    neither. An unfinished run is exported with a warning; its step is in the description.

    Returns:
        The description (with `max_abs_diff_vs_torch` added).
    """
    out = Path(out)
    sidecar = sidecar_path(out)
    if out.suffix.lower() != ".onnx":
        raise FusescopeError(f"{out}: the output file must end in .onnx")
    for path in (out, sidecar):
        if path.is_dir():
            raise FusescopeError(f"{path}: is a folder")
    if size is None:
        crop = run.cfg.data.get("crop_size")
        size = tuple(crop) if crop else (64, 80)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise FusescopeError(f"--size must be two positive integers H W, got {list(size)}")
    modalities = list(run.model.modalities)
    channels = {m: run.meta.modalities[m].channels for m in modalities}
    # the check's inputs and logits at the larger of its two sizes, batch 2 (a lower bound)
    check_fits(
        4 * 2 * (size[0] + 24) * (size[1] + 40) * (sum(channels.values()) + run.meta.num_classes),
        f"--size {size[0]} {size[1]} (the export's test inputs)",
    )
    if not run.finished:
        warn(
            f"{run.path}: unfinished run (its weights are from step {run.step} of "
            f"{run.cfg.train.max_steps}); exporting them, the step is recorded in {sidecar.name}"
        )
    remove_stale_temps(out.parent, [out.name, sidecar.name])  # a killed export's leftovers
    info = describe(run)
    worst = export_model(
        run.model.eval(), modalities, channels, out, tuple(size), info, progress=progress
    )
    info["max_abs_diff_vs_torch"] = worst
    try:
        write_json(sidecar, info)
    except BaseException:
        out.unlink(missing_ok=True)  # the graph is not deployable without its normalisation
        raise
    return info


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(str(onnx_path) + ".json")


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The `fusescope` metadata embedded in an exported file (one-line error otherwise)."""
    return _fusescope_metadata(_load_onnx(path, external_data=False), Path(path))


def _load_onnx(path: str | os.PathLike, external_data: bool = True):
    _require_onnx()
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FusescopeError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as err:  # noqa: BLE001 - truncated, not protobuf, external data missing
        raise FusescopeError(f"{path}: not an ONNX model ({type(err).__name__})") from None


def _fusescope_metadata(proto, path: Path) -> dict:
    props = {p.key: p.value for p in proto.metadata_props}
    if "fusescope" not in props:
        raise FusescopeError(f"{path}: not exported by fusescope (no 'fusescope' metadata)")
    try:
        meta = json.loads(props["fusescope"])
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise FusescopeError(f"{path}: its 'fusescope' metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise FusescopeError(
            f"{path}: format {meta.get('format')!r}, expected {FORMAT!r} (export it again with "
            f"this version of fusescope export)"
        )
    return meta


def verify_onnx(path: str | os.PathLike, run: Run) -> dict:
    """The metadata of an export of `run`, after checking that the file is that export: its
    weights digest is the run's, and its graph (every initializer's bytes) hashes to the digest
    written at export.

    Raises:
        FusescopeError: another run's file, or a graph changed since it was exported.
    """
    path = Path(path)
    proto = _load_onnx(path)
    meta = _fusescope_metadata(proto, path)
    if meta.get("weights_sha256") != weights_digest(run.model):
        raise FusescopeError(
            f"{path}: exported from another run ({meta.get('run')!r}, "
            f"{meta.get('method')!r}) or other weights than {run.path}"
        )
    if graph_digest(proto) != meta.get("graph_sha256"):
        raise FusescopeError(
            f"{path}: its graph or weights changed since it was exported (SHA-256 of the graph "
            f"differs from its metadata's); export {run.path} again"
        )
    return meta


class OnnxSegmentor:
    """An exported model run by ONNX Runtime behind the PyTorch model's interface (batch dict
    in, `{"logits": ...}` out), so evaluation and prediction code use it unchanged.

    Args:
        path: the .onnx file.
        run: the run it must have been exported from (`verify_onnx`: weights and graph digests).
        threads: ONNX Runtime intra-op threads (0: its default, all cores).
    """

    def __init__(self, path: str | os.PathLike, run: Run, threads: int = 0):
        import onnxruntime as ort

        meta = verify_onnx(path, run)
        if threads < 0:
            raise FusescopeError(f"--threads must be 0 (all cores) or more, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.modalities = [i.name for i in self.session.get_inputs()]
        self.num_classes = run.meta.num_classes
        self.training = False
        self.path = Path(path)
        self.streams = dict(meta.get("stream_outputs") or {})  # modality -> output name
        # the run's model combines its streams: with a modality left out, its own rule
        # (`combine_present`) on the graph's stream logits
        self._rule = getattr(run.model, "scores_streams", False)
        self.scores_streams = bool(self._rule and self.streams)
        if self.scores_streams:
            self.combine_present = run.model.combine_present

    def eval(self) -> OnnxSegmentor:
        return self

    def train(self, mode: bool = True) -> OnnxSegmentor:
        if mode:
            raise FusescopeError("an ONNX model cannot be trained")
        return self

    def check_absent(self, absent: list[str]) -> None:
        """Refuse to leave modalities out of a file exported before the streams' logits were
        outputs, when the run's rule needs them (`ModalityAbsent` asks)."""
        if absent and self._rule and not self.streams:
            raise FusescopeError(
                f"{self.path}: exported without its streams' logits (an earlier fusescope), "
                f"so {', '.join(absent)} cannot be left out the way PyTorch does (only the "
                f"present streams combined); export the run again"
            )

    def __call__(self, batch: dict[str, Tensor]) -> dict:
        feeds = {m: batch[m].detach().float().cpu().numpy() for m in self.modalities}
        names = ["logits", *self.streams.values()]
        logits, *streams = self.session.run(names, feeds)
        device = batch[self.modalities[0]].device
        return {
            "logits": torch.from_numpy(logits).to(device),
            "per_modality": {
                m: torch.from_numpy(x).to(device)
                for m, x in zip(self.streams, streams, strict=True)
            },
            "aux_losses": {},
        }
