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
checked against PyTorch on two input sizes before the file is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from fusescope.engine.checkpoint import Run
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, write_json

OPSET = 17
FORMAT = "fusescope-onnx/1"
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


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this model cannot be exported with dynamic height and width (None if it can).

    A model may declare it with an `onnx_unsupported()` method; exporter failures are reported
    by `export_model` as well.
    """
    declared = getattr(model, "onnx_unsupported", None)
    return declared() if callable(declared) else None


def stream_outputs(model: nn.Module, modalities: list[str]) -> dict[str, str]:
    """modality -> ONNX output name of its stream's logits, for a model with its own rule for
    an absent modality (`combine_present`: only the present streams are combined). The graph
    returns them beside `logits`, so `predict --onnx` with a modality left out applies the
    PyTorch model's own rule to them (`OnnxSegmentor`). Empty for other models."""
    if getattr(model, "combine_present", None) is None or len(modalities) < 2:
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
        modalities[name] = {
            "kind": spec.kind,
            "channels": spec.channels,
            "decode": (
                "uint16 PNG x scale = metres"
                if spec.kind == "depth"
                else "image / 255 (8-bit) or / 65535 (16-bit)"
            ),
            **({"scale_m_per_unit": spec.scale} if spec.kind == "depth" else {}),
            "mean": run.stats[name]["mean"],
            "std": run.stats[name]["std"],
            "holes": "depth 0 (no reading) stays 0 after normalisation"
            if spec.kind == "depth"
            else None,
        }
    return {
        "format": FORMAT,
        "opset": OPSET,
        "run": str(run.path.name),
        "method": str(run.cfg.model.name),
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
            entry.key, entry.value = "fusescope", json.dumps(metadata)
            onnx.save(proto, str(tmp))
        bar.update()
        worst = check_against_torch(tmp, graph, modalities, channels, size, device, bar)
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
    export size and another, so a height or width baked in as a constant is caught).

    Raises:
        FusescopeError: ONNX Runtime cannot run the graph (first line of its message).
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
            worst = max(worst, float(np.abs(g - r).max()))
    return worst


def export_run(
    run: Run, out: str | os.PathLike, size: tuple[int, int] | None = None, progress: bool = False
) -> dict:
    """Export a loaded run to `out` (.onnx) and its description to `out` + `.json`.

    Returns:
        The description (with `max_abs_diff_vs_torch` added).
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FusescopeError(f"{out}: the output file must end in .onnx")
    if out.is_dir():
        raise FusescopeError(f"{out}: is a folder")
    if size is None:
        crop = run.cfg.data.get("crop_size")
        size = tuple(crop) if crop else (64, 80)
    modalities = list(run.model.modalities)
    channels = {m: run.meta.modalities[m].channels for m in modalities}
    info = describe(run)
    worst = export_model(
        run.model.eval(), modalities, channels, out, tuple(size), info, progress=progress
    )
    info["max_abs_diff_vs_torch"] = worst
    write_json(sidecar_path(out), info)
    return info


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(str(onnx_path) + ".json")


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The `fusescope` metadata embedded in an exported file (one-line error otherwise)."""
    _require_onnx()
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FusescopeError(f"{path}: ONNX file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise FusescopeError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "fusescope" not in props:
        raise FusescopeError(f"{path}: not exported by fusescope (no 'fusescope' metadata)")
    meta = json.loads(props["fusescope"])
    if meta.get("format") != FORMAT:
        raise FusescopeError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class OnnxSegmentor:
    """An exported model run by ONNX Runtime behind the PyTorch model's interface (batch dict
    in, `{"logits": ...}` out), so evaluation and prediction code use it unchanged.

    Args:
        path: the .onnx file.
        run: the run it must have been exported from (checked by weight digest).
        threads: ONNX Runtime intra-op threads (0: its default, all cores).
    """

    def __init__(self, path: str | os.PathLike, run: Run, threads: int = 0):
        import onnxruntime as ort

        meta = read_onnx_metadata(path)
        digest = weights_digest(run.model)
        if meta.get("weights_sha256") != digest:
            raise FusescopeError(
                f"{path}: exported from another run ({meta.get('run')!r}, "
                f"{meta.get('method')!r}) or other weights than {run.path}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.modalities = [i.name for i in self.session.get_inputs()]
        self.num_classes = run.meta.num_classes
        self.training = False
        self.path = Path(path)
        self.streams = dict(meta.get("stream_outputs") or {})  # modality -> output name
        self._combine = getattr(run.model, "combine_present", None)
        if self._combine is not None and self.streams:
            # a modality left out: the PyTorch model's own rule, on the graph's stream logits
            self.combine_present = self._combine

    def eval(self) -> OnnxSegmentor:
        return self

    def train(self, mode: bool = True) -> OnnxSegmentor:
        if mode:
            raise FusescopeError("an ONNX model cannot be trained")
        return self

    def check_absent(self, absent: list[str]) -> None:
        """Refuse to leave modalities out of a file exported before the streams' logits were
        outputs, when the run's rule needs them (`ModalityAbsent` asks)."""
        if absent and self._combine is not None and not self.streams:
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
