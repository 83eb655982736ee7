#!/usr/bin/env bash
# sae-dashboard, the peer of benchmarks/dashboards.py, in its own venv: it needs transformer-lens 2.x and
# transformers < 4.57, which the main venv's transformer-lens 3 and transformers 5 rule out. CPU only; the peer runs
# offline once installed.
#
#     benchmarks/peer_envs/dashboard.sh [VENV]     # default: .venv-dashboard at the repository root
#
# PYTHON picks the interpreter (default python3); TORCH the torch requirement (default torch==2.13.0). torch is always
# pinned and installed first: where pip's configuration offers a local CPU wheel of that version it takes it, while
# any looser request (as sae-dashboard's own dependency would be) resolves to a multi-GB CUDA build from PyPI.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.venv-dashboard}"
python="${PYTHON:-python3}"
torch_req="${TORCH:-torch==2.13.0}"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# pyarrow (through datasets) is held below 26: pyarrow 26 fails to import against the numpy < 2 that
# transformer-lens 2 needs on this Python
printf '%s\npyarrow<26\n' "$torch_req" > "$constraints"

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install "$torch_req"
"${pip[@]}" install -c "$constraints" sae-dashboard==0.8.0
# decode-clt (a dependency of sae-dashboard used only for cross-layer transcoders) pulls in torchvision and
# torchaudio from PyPI, whose C extensions link libtorch_cuda, which the CPU torch lacks: importing transformers then
# fails. Nothing here needs them.
"${pip[@]}" uninstall -y torchvision torchaudio
touch "$venv/.installed"
echo "sae-dashboard peer venv ready: $venv/bin/python"
