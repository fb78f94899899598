# Shared by scripts/*: create or refresh a virtual environment from the pinned constraints.
# usage: ensure_venv DIR EXTRAS   (EXTRAS like ".[train,dev]" or "." for the serving install)
# Re-installs only when pyproject.toml or the constraints change, so a second run starts at once.
ensure_venv() {
    local dir=$1 target=$2
    local stamp="$dir/.scio-stamp"
    local want
    want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)"-$target"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    local py=${PYTHON:-python3}
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "scio-pose needs Python >= 3.11 (found $("$py" --version))" >&2
        return 1
    }
    [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
    echo "setting up $dir ($target), first run only: a few minutes" >&2
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c requirements/constraints.txt -e "$target"
    repair_xtcocotools "$dir"
    echo "$want" > "$stamp"
}

# xtcocotools' only Linux wheel on PyPI (1.14.3) was compiled against numpy 1.x and fails to
# import under numpy 2. Its sdist builds against the installed numpy, given Cython and no build
# isolation (its setup.py imports numpy). Skipped when the import works (serving installs, or a
# future wheel built for numpy 2).
repair_xtcocotools() {
    local py="$1/bin/python"
    "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("xtcocotools") is None)' \
        || return 0
    "$py" -c 'import xtcocotools._mask' 2>/dev/null && return 0
    echo "rebuilding xtcocotools from source against this numpy (about 20 s)" >&2
    "$py" -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt \
        cython setuptools wheel
    "$py" -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt \
        --no-build-isolation --no-binary xtcocotools --no-deps --force-reinstall xtcocotools
    "$py" -c 'import xtcocotools._mask'
}
