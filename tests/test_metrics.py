import math

import numpy as np
import pytest
import torch

from modules.losses import symmetric_infonce
from modules.metrics import dual_softmax, retrieval_metrics, stack_by_video


def brute_force_metrics(sim):
    """Ranks as the original emits them, by loops: each row sorted in descending order emits one
    rank per position whose value equals the diagonal entry (ties emit several ranks)."""
    ranks = []
    for i, row in enumerate(sim):
        ordered = sorted(row, reverse=True)
        ranks.extend(position for position, value in enumerate(ordered) if value == row[i])
    ranks = sorted(ranks)
    n = len(ranks)
    median = ranks[n // 2] if n % 2 else (ranks[n // 2 - 1] + ranks[n // 2]) / 2
    return {"R1": 100 * sum(r < 1 for r in ranks) / n, "R5": 100 * sum(r < 5 for r in ranks) / n,
            "R10": 100 * sum(r < 10 for r in ranks) / n, "MR": median + 1, "MeanR": sum(ranks) / n + 1}


@pytest.mark.parametrize("n, seed", [(7, 0), (30, 1), (64, 2)])
def test_single_sentence_metrics_match_brute_force(n, seed):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(n, n)).astype(np.float32)
    sim[np.arange(n), np.arange(n)] += rng.uniform(0, 2, size=n).astype(np.float32)
    sim[0, 3] = sim[0, 0]  # a tie: row 0 emits two ranks (the original's rule, SPEC §6)
    metrics = retrieval_metrics(sim)
    for direction, matrix in (("t2v", sim), ("v2t", sim.T)):
        expected = brute_force_metrics(matrix)
        assert metrics[direction] == pytest.approx(expected)
    assert metrics["t2v"]["R1"] != pytest.approx(100 * np.mean((sim > np.diag(sim)[:, None]).sum(1) < 1))


def test_all_equal_matrix_scores_one_over_n():
    """A blank test set (every similarity equal) must not score R@1 = 100: one rank per tied position."""
    n = 8
    metrics = retrieval_metrics(np.full((n, n), 3.5, dtype=np.float32))
    for direction in ("t2v", "v2t"):
        assert metrics[direction]["R1"] == pytest.approx(100 / n)
        assert metrics[direction]["R5"] == pytest.approx(500 / n)
        assert metrics[direction]["MR"] == pytest.approx(np.median(np.arange(n)) + 1)
        assert metrics[direction]["MeanR"] == pytest.approx((n - 1) / 2 + 1)


def test_multi_sentence_hand_made_case():
    # 3 videos; video 0 has captions 0,1; video 1 has caption 2; video 2 has captions 3,4,5.
    sim = np.array([[0.9, 0.1, 0.2],   # caption 0 (video 0): rank 0
                    [0.3, 0.5, 0.4],   # caption 1 (video 0): rank 2
                    [0.8, 0.7, 0.1],   # caption 2 (video 1): rank 1
                    [0.1, 0.2, 0.3],   # caption 3 (video 2): rank 0
                    [0.6, 0.1, 0.5],   # caption 4 (video 2): rank 1
                    [0.9, 0.8, 0.7]], dtype=np.float32)  # caption 5 (video 2): rank 2
    cut_off_points = [1, 2, 5]
    stacked = stack_by_video(sim, cut_off_points)
    assert stacked.shape == (3, 3, 3) and np.isneginf(stacked[0, 2]).all() and np.isneginf(stacked[1, 1:]).all()
    metrics = retrieval_metrics(sim, cut_off_points)
    ranks = [0, 2, 1, 0, 1, 2]
    assert metrics["t2v"]["R1"] == pytest.approx(100 * 2 / 6)
    assert metrics["t2v"]["R5"] == 100.0
    assert metrics["t2v"]["MR"] == 1 + 1  # torch.median of [0,0,1,1,2,2] is the lower middle: 1
    assert metrics["t2v"]["MeanR"] == pytest.approx(np.mean(ranks) + 1)
    # video->text: best caption of each video against each video.
    # best[v_caps, v] = max over captions of v_caps of sim[., v]:
    # video0 caps: [0.9, 0.5, 0.4]; video1 caps: [0.8, 0.7, 0.1]; video2 caps: [0.9, 0.8, 0.7]
    # row = querying video v: v0 -> [0.9, 0.8, 0.9] ranks 0 and 1 (a tie emits both); v1 -> [0.5, 0.7, 0.8]
    # rank 1; v2 -> [0.4, 0.1, 0.7] rank 0. Ranks [0, 1, 1, 0].
    assert metrics["v2t"]["R1"] == pytest.approx(100 * 2 / 4)
    assert metrics["v2t"]["MR"] == 1.5 and metrics["v2t"]["MeanR"] == pytest.approx(1.5)


def test_symmetric_infonce_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.2, 0.7]])
    def row_loss(m):
        return sum(-(m[i][i] - math.log(sum(math.exp(v) for v in m[i])))
                   for i in range(3)) / 3
    rows = logits.tolist()
    cols = logits.T.tolist()
    expected = (row_loss(rows) + row_loss(cols)) / 2
    assert symmetric_infonce(logits).item() == pytest.approx(expected, rel=1e-6)


def test_dual_softmax_by_hand():
    sim = np.array([[1.0, 2.0], [3.0, 0.5], [0.0, 0.0]], dtype=np.float32)
    out = dual_softmax(sim)
    for j in range(2):
        column = np.exp(sim[:, j]) / np.exp(sim[:, j]).sum()
        np.testing.assert_allclose(out[:, j], sim[:, j] * column * 3, rtol=1e-6)
