#!/usr/bin/env bash
# Benchmarks 1, 2 and 3 on a GPU (~4-5 min on one H200): the (c) sections of gpu_checks.sh, which
# holds their GPU sizes, time limits and report. Run from anywhere, with a Python whose torch has
# CUDA and the project installed (pip install -c requirements/lock.txt -e .):
#     PYTHON=.venv/bin/python bash benchmarks/gpu.sh
# Report: $OUT/gpu_checks.md ($OUT: a new temporary folder unless set), also printed.
GPU_CHECKS_SECTIONS=${GPU_CHECKS_SECTIONS:-overhead claim datapath} exec bash "$(dirname "$0")/gpu_checks.sh"
