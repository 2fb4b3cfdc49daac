#!/usr/bin/env bash
# Set up the unmodified official deep-S4 code (furiosa-ai/ssm-peft, its S4/ folder) in the ignored folder
# official_s4/, for the same-call timings against it (`python -m synthetic.bench --official-dir official_s4/S4`;
# on a device call carry ["official_s4"]: it needs no network there). A measuring aid: nothing of it is committed.
#
#   bash scripts/setup_official_s4.sh GIT_DIR [DEST]
#
# GIT_DIR: a clone or the `fetch` tool's mirror of furiosa-ai/ssm-peft (e.g. /work/.mirror/furiosa-ai+ssm-peft/repo).
# DEST (default official_s4): gets S4/ (every file of the snapshot's S4/ but models/mamba, analysis and the
# notebooks, written one by one with `git show`: `git archive` fails on a missing notebook object), S4/environment.py
# (the wandb entity the code imports), S4/stubs/wandb (no-op init / log / finish and a dict-like config, so the code
# runs offline) and einops under DEST/pylib (pip --target; bench adds it to the timer's PYTHONPATH). An existing
# DEST is refused (remove it first): nothing is half-written over an older copy.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: bash scripts/setup_official_s4.sh GIT_DIR [DEST]" >&2
    exit 2
fi
src="$1"
dest="${2:-official_s4}"
git --git-dir "$src" rev-parse --verify -q HEAD:S4/run_s4.py > /dev/null 2>&1 \
    || { echo "GIT_DIR: $src is not a git directory of furiosa-ai/ssm-peft (no S4/run_s4.py at HEAD)" >&2; exit 2; }
[ ! -e "$dest" ] || { echo "DEST: $dest exists; remove it first (it is not overwritten)" >&2; exit 2; }
tmp="$dest.partial"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
git --git-dir "$src" ls-tree -r --name-only HEAD S4 \
    | grep -v -e '^S4/models/mamba/' -e '^S4/analysis/' -e '\.ipynb$' \
    | while IFS= read -r f; do
        mkdir -p "$tmp/$(dirname "$f")"
        git --git-dir "$src" show "HEAD:$f" > "$tmp/$f"
    done
cat > "$tmp/S4/environment.py" <<'EOF'
WANDB_INFO = {'entity': 'x', 'project': 'y'}
EOF
mkdir -p "$tmp/S4/stubs/wandb"
cat > "$tmp/S4/stubs/wandb/__init__.py" <<'EOF'
"""No-op stand-in for wandb: the official code logs to it; timing runs offline."""


class _Config(dict):
    def update(self, *args, **kwargs):
        if args and not isinstance(args[0], dict):
            args = (vars(args[0]),) + args[1:]
        kwargs.pop("allow_val_change", None)
        super().update(*args, **kwargs)

    __getattr__ = dict.get


config = _Config()


def init(*args, **kwargs):
    return None


def log(*args, **kwargs):
    return None


def finish(*args, **kwargs):
    return None
EOF
"${PYTHON:-python}" -m pip install -q --no-deps --target "$tmp/pylib" einops
mv "$tmp" "$dest"
trap - EXIT
echo "wrote $dest: $(git --git-dir "$src" rev-parse --short HEAD) of furiosa-ai/ssm-peft, $(du -sh "$dest" | cut -f1);" \
     "time it with: python -m synthetic.bench --preset paper --runs 1 --official-dir $dest/S4"
