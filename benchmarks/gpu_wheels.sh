#!/usr/bin/env bash
# Fills .whl/ with the wheels that a GPU machine without network needs for the project and
# benchmarks/gpu_checks.sh (which installs them with pip --no-index --no-deps --target): the
# runtime packages its Python image lacks, at requirements/lock.txt's versions, for CPython 3.12 on
# manylinux x86-64 (pure-Python wheels where a package has them). About 20 MiB. Needs pip and PyPI.
#     bash benchmarks/gpu_wheels.sh && echo /.whl/ >> .git/info/exclude
# The machine's image already has torch, numpy, scipy, scikit-learn, matplotlib, pyyaml, requests,
# click, cloudpickle, packaging, anyio, joblib, markupsafe, zipp, h11 and annotated-doc.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PACKAGES=(
  hydra-core omegaconf hydra-joblib-launcher mnist1d   # antlr4-python3-runtime: built below
  # mlflow's client with its SQLite store: mlflow-skinny (the same `mlflow` package as mlflow,
  # without the UI and server dependencies) and what `import mlflow` and the store import
  mlflow-skinny SQLAlchemy alembic Mako sqlparse cryptography cffi pycparser
  cachetools GitPython gitdb smmap importlib_metadata python-dotenv
  opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
  pydantic pydantic_core annotated-types typing-inspection
  fastapi starlette databricks-sdk    # imported by `import mlflow` (its gateway and genai modules)
  protobuf typing_extensions          # newer than an image may have: mlflow's generated code needs them
)
pins=()
for name in "${PACKAGES[@]}" antlr4-python3-runtime; do
  pin=$(grep -i "^${name}==" requirements/lock.txt) || { echo "error: $name is not pinned in requirements/lock.txt" >&2; exit 2; }
  pins+=("$pin")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]:0:${#PACKAGES[@]}}"
# antlr4-python3-runtime 4.9.3 (what hydra-core 1.3 needs) is published as source only: build its
# pure-Python wheel here.
python3 -m pip wheel -q --no-deps --no-binary :all: -w .whl "${pins[-1]}"
ls -l .whl
du -sh .whl
