"""Export a torch module to ONNX (opset >= 17, dynamic batch) and check the graph."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..artifacts import MODULE, ONNX, Artifact, InputSpec, sha256_file
from ..capture import dynamic_shapes, reads_dynamic_sizes, static_spec  # noqa: F401 - re-exported
from ..errors import CompressError, first_line
from ..model_io import StaticBatchAdapter, example_inputs
from ..passes import Pass, PassResult, RunContext, register

MIN_OPSET = 17


@dataclass
class ExportConfig:
    opset: int = 18
    filename: str = "model.onnx"

    def __post_init__(self):
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be at least {MIN_OPSET}, got {self.opset}")


def export_onnx(module: torch.nn.Module, spec: InputSpec, path: Path, opset: int = 18, legacy_only: bool = False) -> str:
    """Write `module` to `path` as ONNX; returns which exporter produced it.

    `legacy_only`: fake-quantized graphs, which torch.export cannot re-trace (fake_quantize has no
    fake-tensor kernel there); the TorchScript exporter writes them as standard Q/DQ.
    """
    static = spec.static_batch
    if isinstance(module, StaticBatchAdapter):
        module = module.inner  # the graph only runs at its exported batch size
    # Batch 2: a size-1 example makes torch.export specialise the batch dimension to 1.
    args = example_inputs(spec, batch=static or 2, sequence=16)
    names = [t.name for t in spec.inputs]
    errors = []
    exporters = [_legacy] if legacy_only or isinstance(module, torch.jit.ScriptModule) else [_dynamo, _legacy]
    for exporter in exporters:
        try:
            with _quiet(), torch.no_grad():
                exporter(module, args, spec, path, opset)
            break
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all if none works
            errors.append(f"{exporter.__name__.strip('_')}: {first_line(e, 200)}")
    else:
        raise CompressError(f"ONNX export failed: {'; '.join(errors)}")
    model = onnx.load(str(path))
    _name_io(model, names, spec, static)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise CompressError(f"the exported ONNX graph is invalid: {str(e).splitlines()[0]}") from None
    onnx.save(model, str(path))
    return exporters[len(errors)].__name__.strip("_")


def wide_quantizers(module: torch.nn.Module) -> dict[str, tuple[float, int]]:
    """The 16-bit activation quantizers (QNN's a16w8 layers): name -> scale, zero point."""
    from ..quantize.fakequant import fake_quants

    if isinstance(module, StaticBatchAdapter):
        module = module.inner  # what export_onnx exports: the exported names are relative to it
    wide = {}
    for name, fq in fake_quants(module):
        if fq.is_wide:
            scale, zero = (t.detach() for t in fq.wide_qparams())
            wide[name] = (float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]))
    return wide


def _dynamo(module, args, spec: InputSpec, path: Path, opset: int) -> None:
    torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                      dynamic_shapes=dynamic_shapes(spec), external_data=False, verbose=False)


def _legacy(module, args, spec: InputSpec, path: Path, opset: int) -> None:
    names = [t.name for t in spec.inputs]
    axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str) and not (i == 0 and spec.static_batch)}
            for t in spec.inputs}
    axes["output"] = {} if spec.static_batch else {0: "batch"}
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                      output_names=["output"], dynamic_axes=axes, do_constant_folding=True)


def _name_io(model: onnx.ModelProto, names: list[str], spec: InputSpec, static: int | None) -> None:
    """Stable names: inputs as in the spec, dynamic dims 'batch'/'sequence', first output 'output'."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializers]
    renames: dict[str, str] = {}
    symbol_names: dict[str, str] = {}
    for value, tspec in zip(real_inputs, spec.inputs):
        renames[value.name] = tspec.name
        for dim, want in zip(value.type.tensor_type.shape.dim, tspec.shape):
            if dim.dim_param and isinstance(want, str):
                symbol_names[dim.dim_param] = want
    if graph.output:
        renames[graph.output[0].name] = "output"
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol_names.get(dim.dim_param, dim.dim_param)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings of their own; keep the user's terminal clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@register
class ExportPass(Pass):
    name = "export"
    takes = (MODULE,)
    returns = ONNX
    Config = ExportConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        path = workdir / self.config.filename
        precision = artifact.meta.get("precision", "fp32")
        metrics: dict = {"precision": precision}
        spec = artifact.spec
        if precision == "fp32":
            exporter = export_onnx(artifact.module, artifact.spec, path, self.config.opset)
        else:
            from ..quantize import qdq
            from ..quantize.fakequant import export_mode
            from ..quantize.scheme import QuantScheme

            if reads_dynamic_sizes(artifact.module):
                spec = static_spec(spec, ctx.data.calib)
                metrics["static_shapes"] = {t.name: list(t.concrete_shape()) for t in spec.inputs}
                ctx.progress.log("  static shapes (the quantized graph reads its dynamic dimensions): "
                                 + ", ".join(f"{t.name} {'x'.join(map(str, t.concrete_shape()))}" for t in spec.inputs))
            with export_mode(artifact.module):
                exporter = export_onnx(artifact.module, spec, path, self.config.opset, legacy_only=True)
            scheme = QuantScheme.from_target(ctx.target)
            metrics.update(qdq.finalize(path, scheme.bias_int32, scheme.weights.qrange, wide_quantizers(artifact.module)))
        meta = {**artifact.meta, "exporter": exporter, "opset": self.config.opset}
        out = Artifact(ONNX, spec, sha256_file(path), path=path, meta=meta)
        metrics.update(exporter=exporter, onnx_bytes=path.stat().st_size)
        return PassResult(out, metrics)
