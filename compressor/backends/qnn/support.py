"""Which nodes of a graph the HTP takes: a session with CPU fallback allowed records where each
node went (onnxruntime's graph assignment info), and the QNN EP's verbose log says why it refused
the others ("Validation FAILED for N nodes in OrtNodeUnit (Conv): ... REASON : ...")."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import CompressError, first_line
from .runtime import EP_NAME, HtpOptions, native_output, session_options

_UNIT = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((?P<unit>[^)]*)\)\s*:(?P<body>.*?)REASON\s*:\s*"
                   r"(?P<reason>[^\n]*)", re.S)
_NODE = re.compile(r"Operator type: (?P<op>\S+) Node name: (?P<name>.*?) Node index: \d+")


@dataclass(frozen=True)
class Placement:
    name: str
    op: str
    reason: str  # the QNN EP's, or why there is none

    def __str__(self) -> str:
        return f"{self.name} ({self.op}): {self.reason}"

    as_dict = asdict


def parse_reasons(log: str) -> dict[str, tuple[str, str, str]]:
    """node name -> (op, the node unit it was validated in, the reason) from the QNN EP's log."""
    reasons = {}
    for unit in _UNIT.finditer(log):
        for node in _NODE.finditer(unit["body"]):
            reasons.setdefault(node["name"].strip(), (node["op"], unit["unit"], unit["reason"].strip()))
    return reasons


def cpu_nodes(model_path: Path, htp: HtpOptions) -> list[Placement]:
    """The nodes of `model_path` that the HTP does not take, each with the QNN EP's reason."""
    import onnxruntime as ort

    options = session_options(htp, cpu_fallback=True, log_level=0, **{"session.record_ep_graph_assignment_info": "1"})
    try:
        with native_output() as log:
            session = ort.InferenceSession(str(model_path), options)
            reasons = parse_reasons(log())
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise CompressError(f"{model_path}: the QNN execution provider cannot open the graph: {first_line(e)}") from None
    placed = []
    for subgraph in session.get_provider_graph_assignment_info():
        if subgraph.ep_name == EP_NAME:
            continue
        for node in subgraph.get_nodes():
            op, unit, reason = reasons.get(node.name, (node.op_type, "", ""))
            why = reason or "the QNN EP did not claim it (no validation failure logged)"
            if unit and unit != node.op_type:
                why += f" (validated with its {unit} node unit)"
            placed.append(Placement(node.name, node.op_type, why))
    return placed
