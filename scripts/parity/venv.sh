# Sourced by the fixture scripts: sets $python to a virtualenv outside the repo (MPF_FIXTURE_VENV,
# default ~/.cache/mpf-fixtures-venv) with the pinned PyPI packages the fixtures were made with.
venv="${MPF_FIXTURE_VENV:-$HOME/.cache/mpf-fixtures-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "torch==2.15.0" "transformers==5.23.0" "safetensors==0.8.0" "numpy<3" "scipy==1.17.1"
python="$venv/bin/python"
