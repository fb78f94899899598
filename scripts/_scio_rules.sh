# Shared by scripts/build-demo-bundle and scripts/scio-seeds (which repeats the build's tuning):
# how `benchmarks/scio_probes.py --fit` fits SCIO's acceptance rules and calibrated confidence.
# One rule per pair of mirror-image groups; hypotheses from the backbone's and Φ's D and the
# highest local maximum of H_D after its peak (stop 33: no mirror hypothesis, one maximum; see
# the build script for the measurements that chose them).
SCIO_RULE_ARGS=(--hypotheses backbone,phi,peaks --peaks 1 --accept-row-features all
    --per-group-rules --mirror-rules)
