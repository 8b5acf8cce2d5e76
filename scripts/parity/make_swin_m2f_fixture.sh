#!/usr/bin/env bash
# Regenerates tests/fixtures/hf_swin_tiny/ (a tiny transformers Mask2Former with a Swin backbone, its
# outputs, and its detectron2-named twins), tests/fixtures/hf_tiny/detectron2.pth and the numpy pickles
# of every protocol in tests/fixtures/pickle/, in the same
# pinned virtualenv as make_fixture.sh. Run once, after make_fixture.sh; the outputs are committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"
"$python" "$here/make_swin_m2f_fixture.py" "$here/../../tests/fixtures"
"$python" "$here/make_pickle_fixtures.py" "$here/../../tests/fixtures"
