#!/usr/bin/env bash
# Regenerates tests/fixtures/hf_tiny/ from Hugging Face transformers' Mask2Former (CPU, random
# weights). Installs pinned packages from PyPI into a virtualenv outside the repo, then runs
# make_fixture.py. Run once; the outputs are committed and the Rust tests read them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"
"$python" "$here/make_fixture.py" "$here/../../tests/fixtures/hf_tiny"
