"""What one long text costs in memory: Model.embed([text]) on a text of --words words ("word "
each: 5 characters a word, 390,000 words = 1.95 MB, just under edge-serve's default 2 MB body
limit), the peak RSS it adds over the loaded model, with the tokenizer reading the text's head
(edge_runtime/_text.py, _head: what load() does) and reading it whole (the head cut turned off:
what it did before). Each case runs in a fresh process, so peaks do not carry over.

    python benchmarks/bench_long_text_memory.py ARTIFACT_DIR [--words 390000] [--artifact onnx-int8]
        [--separator newline]   # "word\n" each: lines without spaces (a log, a CSV)
        [--body csv]            # as many characters of text without any whitespace: csv ("1,2;"),
                                # base64, cjk (Japanese), one-word ("x")
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys
import psutil
import edge_runtime
from edge_runtime import _text
directory, artifact, words, whole = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "whole"
separator, body = sys.argv[5], sys.argv[6]
if whole:  # tokenized whole, as before the head cut
    _text.TextEncoder._head_of = lambda self, text: text
text = body * (5 * words // len(body)) if body else ("word" + separator) * words
model = edge_runtime.load(directory, artifact=artifact, device_cache=False)
model.embed(["warm up"])
before = psutil.Process().memory_info().rss
vector = model.embed([text])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
print(json.dumps({"peak_added_mb": round((peak - before) / 2**20, 1), "norm": float((vector ** 2).sum())}))
"""


SEPARATORS = {"space": " ", "newline": "\n", "tab": "\t"}
BODIES = {"csv": "1,2;", "base64": "QUJD+/==", "cjk": "東京は日本の首都です。", "one-word": "x"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--words", type=int, default=390_000)
    parser.add_argument("--artifact", default="onnx-fp32")
    parser.add_argument("--separator", choices=sorted(SEPARATORS), default="space",
                        help="what follows each word (default %(default)s)")
    parser.add_argument("--body", choices=sorted(BODIES), help="instead of words: this text repeated to as many "
                        "characters, without any whitespace")
    args = parser.parse_args(argv)
    results = {}
    for case in ("head", "whole"):
        done = subprocess.run([sys.executable, "-c", _CHILD, args.directory, args.artifact, str(args.words), case,
                               SEPARATORS[args.separator], BODIES.get(args.body, "")],
                              capture_output=True, text=True, check=True)
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
    same = abs(results["head"]["norm"] - results["whole"]["norm"]) < 1e-6
    print(json.dumps({"words": args.words, "characters": 5 * args.words, "separator": args.separator, "body": args.body,
                      "artifact": args.artifact,
                      **{f"{case}_peak_added_mb": r["peak_added_mb"] for case, r in results.items()},
                      "same_embedding": same}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
