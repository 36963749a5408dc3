"""Write Kinetics-600 zero-shot splits (XCLIP_SPEC §5): the K600 classes whose exact name is not a
K400 class, and N random choices of 160 of them, each as a labels CSV and a list file.

    python preprocess/zero_shot_splits.py --list k600/val_list.txt --out k600_zero_shot

writes `zero_shot_split1.txt`, `zero_shot_split1_labels.csv`, ... (labels renumbered to each CSV's rows),
which `main.py --zero_shot_lists ... --zero_shot_labels ...` evaluates and `DATASET=k600
bash scripts/xclip_zero_shot.sh` reads from its `DATA_PATH`. The rule is
`dataloaders.protocols.write_zero_shot_splits`; by exact name K600 has 232 such classes (the
paper's 220 also counts 12 renamed K400 classes as seen).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
from dataloaders.annotations import AnnotationError  # noqa: E402
from dataloaders.protocols import write_zero_shot_splits  # noqa: E402
from dataloaders.video_list import LABEL_CSVS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", required=True, help="list file labelled with --labels_csv's indices")
    parser.add_argument("--out", required=True, help="folder for zero_shot_split<i>.txt and zero_shot_split<i>_labels.csv (i = 1..)")
    parser.add_argument("--labels_csv", default=LABEL_CSVS["kinetics600"], help="the classes of --list")
    parser.add_argument("--seen_labels_csv", default=LABEL_CSVS["kinetics400"],
                        help="the classes the model was trained on (excluded by exact name)")
    parser.add_argument("--splits", type=int, default=3, help="number of random splits")
    parser.add_argument("--classes", type=int, default=160, help="classes per split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random class choice")
    args = parser.parse_args(argv)
    try:
        result = write_zero_shot_splits(labels_csv=args.labels_csv, seen_labels_csv=args.seen_labels_csv,
                                        list_path=args.list, out_dir=args.out, n_splits=args.splits,
                                        split_size=args.classes, seed=args.seed)
    except (AnnotationError, ValueError) as err:
        parser.error(str(err))
    print(f"{result['novel']} classes of {args.labels_csv} are not in {args.seen_labels_csv}")
    for labels_csv, list_path in result["splits"]:
        print(f"{labels_csv} {list_path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
