#!/usr/bin/env bash
# Regenerates tests/fixtures/hf_tiny/ from Hugging Face transformers' Mask2Former (CPU, random
# weights). Installs pinned packages from PyPI into a virtualenv outside the repo, then runs
# make_fixture.py. Run once; the outputs are committed and the Rust tests read them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${MPF_FIXTURE_VENV:-$HOME/.cache/mpf-fixtures-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "torch==2.15.0" "transformers==5.23.0" "safetensors==0.8.0" "numpy<3"
"$venv/bin/python" "$here/make_fixture.py" "$here/../../tests/fixtures/hf_tiny"
