#!/usr/bin/env bash
# The search app on the demo: reuse (or train, with scripts/demo.sh) a demo model, index the 80
# test videos of the procedural demo, query every test caption and print how often its own video
# comes first (and within the top 5). The model it trains when $OUTPUT_DIR has none is the demo's
# without token clustering, for 20 epochs (the most accurate demo recipe measured; see the README).
#   bash scripts/demo_search.sh          # DATA_DIR, OUTPUT_DIR, EPOCHS (as scripts/demo.sh), INDEX_DIR override
#   OUTPUT_DIR=outputs/demo bash scripts/demo_search.sh    # search with the model scripts/demo.sh trained
# PYTHON=... uses that interpreter as it is (nothing is installed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DATA_DIR=${DATA_DIR:-data}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo_search}
INDEX_DIR=${INDEX_DIR:-$OUTPUT_DIR/search_index}
INSTALL=$([[ -z ${PYTHON:-} ]] && echo 1 || echo 0)
PYTHON=$(project_python)
CHECKPOINT=$OUTPUT_DIR/ckpt.best.pth.tar

if [[ ! -f $CHECKPOINT ]]; then
  DATA_DIR=$DATA_DIR OUTPUT_DIR=$OUTPUT_DIR EPOCHS=${EPOCHS:-20} bash scripts/demo.sh --cluster_inter 0
fi
if ((INSTALL)); then
  "$PYTHON" -m pip install --quiet -r requirements-apps.txt
fi
# The test split's videos, as links in a folder of their own.
TEST_VIDEOS=$OUTPUT_DIR/search_test_videos
"$PYTHON" - "$DATA_DIR/demo" "$TEST_VIDEOS" <<'PY'
import json, os, sys
root, folder = sys.argv[1:]
os.makedirs(folder, exist_ok=True)
for item in json.load(open(os.path.join(root, "annotations.json")))["test"]:
    link = os.path.join(folder, item["video"])
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(os.path.join(root, "videos", item["video"])), link)
PY
"$PYTHON" -m apps.search index --checkpoint "$CHECKPOINT" --videos "$TEST_VIDEOS" --index "$INDEX_DIR"
"$PYTHON" - "$DATA_DIR/demo" "$INDEX_DIR" <<'PY'
import json, os, sys
from apps.search.query import Searcher
root, index = sys.argv[1:]
searcher = Searcher(index)
items = json.load(open(os.path.join(root, "annotations.json")))["test"]
first = top5 = 0
for item in items:
    results = searcher.search(searcher.text_vector(item["caption"]), top_k=5, max_per_video=1)
    names = [os.path.basename(r["path"]) for r in results]
    first += names[0] == item["video"]
    top5 += item["video"] in names
print(f"{len(items)} test captions: own video first for {first} ({100 * first / len(items):.1f}%), "
      f"in the top 5 for {top5} ({100 * top5 / len(items):.1f}%); chance of first: {100 / len(items):.2f}%")
PY
