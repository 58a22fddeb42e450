"""Would a verdict on more of the site's cases have told a fine-tuned model's test result?

``leave_one_institution_out.py``'s ``site3_*`` models trained on the site's labelled cases 1-2 and validated on
case 3; cases 4-6 are labelled but unused by them (not test patients). This scores each ``site3_*`` model (delivered
or refused) and the base on cases 4-6 and prints the gain there beside the gain on the test patients.

    python scripts/loio_verdict_probe.py PREPARED OUT RESULTS.json [OUT RESULTS.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leave_one_institution_out import score  # noqa: E402  (also puts the core on sys.path)
from monaiunetseg.training.finetune import WORSE  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 3 or len(argv) % 2 == 0:
        print(__doc__)
        return 2
    prepared = Path(argv[0])
    for out, results in zip(argv[1::2], argv[2::2]):
        r = json.loads(Path(results).read_text())
        extra = r["labelled"][3:6]
        base = statistics.mean(score(Path(out) / "base_model", prepared, extra).values())
        base_test = statistics.mean(r["models"]["base"]["dice"].values())
        print(f"{r['site']}: cases 4-6 {extra}: base {base:.3f}")
        for name, m in r["models"].items():
            if not name.startswith("site3"):
                continue
            folder = Path(out) / f"{name}_model"
            if m["status"] == "worse":  # finetune kept it aside, as leave_one_institution_out.py scores it
                folder = folder / WORSE
            gain = statistics.mean(score(folder, prepared, extra).values()) - base
            test = statistics.mean((m["refused_dice"] or m["dice"]).values()) - base_test
            print(f"  {name} ({m['status']}): cases 4-6 {gain:+.3f}, test patients {test:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
