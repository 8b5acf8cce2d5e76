#!/usr/bin/env bash
# Regenerates tests/fixtures/swin_tiny/ from transformers' SwinBackbone (CPU, random weights), in the
# same pinned virtualenv as make_fixture.sh. Run once; the outputs are committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"
"$python" "$here/make_swin_fixture.py" "$here/../../tests/fixtures/swin_tiny"
