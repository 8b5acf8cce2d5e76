#!/usr/bin/env bash
# Regenerates tests/fixtures/swin_tiny/ from transformers' SwinBackbone (CPU, random weights), in the
# same pinned virtualenv as make_fixture.sh. Run once; the outputs are committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${MPF_FIXTURE_VENV:-$HOME/.cache/mpf-fixtures-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "torch==2.15.0" "transformers==5.23.0" "safetensors==0.8.0" "numpy<3"
"$venv/bin/python" "$here/make_swin_fixture.py" "$here/../../tests/fixtures/swin_tiny"
