"""Where a ranking may cut its candidates: the choice of cut points both prefix scorers share
(converters/tflite/prefix.py, converters/onnx/prefix.py).

A ranking candidate differs from the search's start model from some op on (its first changed
op); everything before that op computes what the start model computes. A prefix scorer keeps the
start model's "crossing" tensors (made before a cut point, read from it on) and runs each
candidate from the latest chosen cut point before its first changed op. The points chosen here
let the candidates skip the most ops within a memory budget per token of a row.
"""

from __future__ import annotations

__all__ = ["choose_points"]


def choose_points(narrow: list[int], changes: list[int], width: dict[int, float], bytes_per_token: int) -> list[int]:
    """The cut points among `narrow` (op indices) that let the candidates skip the most ops
    (each op index of `changes` being some candidate's first changed op, cut at the latest chosen
    point at or before it), as many as the widest point's kept bytes per token (`width`) allow in
    `bytes_per_token`; an exact dynamic program over the sorted points (a greedy pick took the
    middle of the model first and left layer starts out)."""
    if not narrow:
        return []
    widest = max(width[p] for p in narrow)
    most = max(0, min(len(narrow), int(bytes_per_token // max(widest, 1.0))))
    if most == 0:
        return []
    points = sorted(narrow)
    ahead = [sum(1 for op in changes if op >= p) for p in points]  # changed ops at or after each point

    def served(i: int, j: int | None) -> int:
        """Ops skipped by the candidates that point i serves when j is the next chosen point."""
        return points[i] * (ahead[i] - (ahead[j] if j is not None else 0))

    # best[k][j]: the most ops skipped by candidates before point j, with k points chosen, the last one j.
    best = [[0] * len(points)]
    choice: list[list[int | None]] = [[None] * len(points)]
    for k in range(1, most):
        row, back = [], []
        for j in range(len(points)):
            options = [(best[k - 1][i] + served(i, j), i) for i in range(j)]
            value, i = max(options) if options else (-1, None)
            row.append(value)
            back.append(i)
        best.append(row)
        choice.append(back)
    _, k, j = max((best[k][j] + served(j, None), k, j) for k in range(most) for j in range(len(points))
                  if best[k][j] >= 0)
    chosen = []
    while j is not None:
        chosen.append(points[j])
        j, k = choice[k][j], k - 1
    chosen.sort()
    # A point with no changed op before the next one is no candidate's latest point: never used.
    bounds = chosen[1:] + [max(changes, default=0) + 1]
    return [p for p, end in zip(chosen, bounds) if any(p <= op < end for op in changes)]
