#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine and run it.
#   bash scripts/test.sh [pytest args...]
# - Python deps into .venv (torch 2.14.1 / torchvision 0.29.1, the project with its dlib, app, postgres, test extras)
# - Debian chromium + chromium-driver (browser test) and postgresql (store tests on a real server), when apt-get
#   is usable; without them those tests skip with the reason.
# - FACEGALLERY_DATA defaults to ../shared/data beside the checkout (the labelled face sets).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# --no-cache-dir: torch's CUDA wheels are ~6 GB installed; a pip cache would hold a second copy of the download.
# Say so in one line when the disk looks too small for them (pip's own failure is "Errno 28" deep in a log).
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ ! -d .venv/lib ] || [ -z "$(ls .venv/lib/python3*/site-packages/torch 2>/dev/null | head -1)" ]; then
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((7 * 1024 * 1024)) ]; then
    echo "warning: $(( free_kb / 1024 )) MiB free here; torch and the test dependencies take about 7 GiB" >&2
  fi
fi
PIP=(.venv/bin/python -m pip install -q --no-cache-dir)
"${PIP[@]}" --upgrade pip >/dev/null 2>&1 || true
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" -e '.[dlib,app,postgres,fast,server,milvus,test]'

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=""
  command -v chromium >/dev/null 2>&1 || need="$need chromium"
  command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
  if [ -n "$need" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/dev/null 2>&1 \
      || echo "warning: could not install$need; those tests will skip" >&2
  fi
fi

# A throw-away PostgreSQL cluster on 127.0.0.1 for the store tests (stopped on exit).
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "${FACEGALLERY_TEST_PG_URL:-}" ] && [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ]; then
  PGDIR=$(mktemp -d /tmp/facegallery-pg.XXXXXX)
  chown postgres "$PGDIR" 2>/dev/null || true
  PGPORT=${PGPORT:-55432}
  asuser() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  if asuser "'$PGBIN/initdb' -D '$PGDIR/data' -A trust -U postgres" >/dev/null 2>&1 \
     && asuser "'$PGBIN/pg_ctl' -D '$PGDIR/data' -o \"-h 127.0.0.1 -p $PGPORT -k '$PGDIR'\" -l '$PGDIR/log' -w start" >/dev/null 2>&1; then
    trap "su postgres -s /bin/sh -c \"'$PGBIN/pg_ctl' -D '$PGDIR/data' -m fast stop\" >/dev/null 2>&1 || '$PGBIN/pg_ctl' -D '$PGDIR/data' -m fast stop >/dev/null 2>&1; rm -rf '$PGDIR'" EXIT
    export FACEGALLERY_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
  else
    echo "warning: could not start PostgreSQL; postgres tests will skip" >&2
  fi
fi

if [ -z "${FACEGALLERY_DATA:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export FACEGALLERY_DATA="$ROOT/../shared/data"
fi
export MPLBACKEND=Agg
# One torch/OpenMP thread per process: the suite runs MTCNN and the embedders in several processes and threads
# at once on 2 cores, where two OpenMP threads each oversubscribe the CPU (measured: MTCNN 1.8 s vs 0.18 s).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Two legs, so that an assertion that holds with one CPU's float code path only fails on one machine, not on the
# next. Leg 1, the whole suite, in the machine's environment as it is (where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
# are set, they are set because older OpenBLAS builds misbehave on that CPU: never unset here). Leg 2, the tests
# marked `numeric` (float results: embedders, fast paths, calibration, vector index) again with the CPU capped
# at AVX2 in every library that has a knob: OpenBLAS (numpy, faiss), ATen, oneDNN, MKL, FAISS, numpy's own SIMD.
# Haswell kernels run on every AVX2 CPU, so the cap is safe wherever the suite runs.
AVX2=(OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
      FAISS_SIMD_LEVEL=AVX2 "NPY_DISABLE_CPU_FEATURES=X86_V4 AVX512_ICL AVX512_SPR")

status=0
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" || status=$?
echo "== numeric tests again with the CPU capped at AVX2 (${AVX2[*]})" >&2
numeric=0
env "${AVX2[@]}" .venv/bin/python -m pytest -q -p no:cacheprovider "$@" -m numeric || numeric=$?
# exit 5 = no test selected: only acceptable when the arguments narrowed the run to files without numeric tests
if [ "$numeric" -eq 5 ] && [ "$#" -gt 0 ]; then
  echo "no numeric test among the chosen tests: AVX2 leg skipped" >&2
  numeric=0
fi
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$numeric"
