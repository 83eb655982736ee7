#!/usr/bin/env bash
# circuit-tracer, the peer of benchmarks/graph_vs_circuit_tracer.py, in its own venv (it pins transformers 4.57 and
# transformer-lens, which the main venv's versions rule out). CPU only; the peer runs offline once installed.
#
#     benchmarks/peer_envs/circuit_tracer.sh [VENV]     # default: .venv-circuit-tracer at the repository root
#
# PYTHON picks the interpreter (default python3); TORCH the torch requirement (default torch==2.13.0). torch is always
# pinned and installed first, and held there by a constraint: where pip's configuration offers a local CPU wheel of
# that version it takes it, while any looser request (as circuit-tracer's own dependency would be) resolves to a
# multi-GB CUDA build from PyPI. nnsight is held at 0.7.0: circuit-tracer 0.5.0 does not import with nnsight 0.8.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.venv-circuit-tracer}"
python="${PYTHON:-python3}"
torch_req="${TORCH:-torch==2.13.0}"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "$torch_req" > "$constraints"

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install "$torch_req"
"${pip[@]}" install -c "$constraints" circuit-tracer==0.5.0 nnsight==0.7.0
"$venv/bin/python" -c "import circuit_tracer, nnsight; from circuit_tracer import ReplacementModel, attribute"
touch "$venv/.installed"
echo "circuit-tracer peer venv ready: $venv/bin/python"
