"""Independent float64 numpy / scipy versions of the feature and relation losses, written from the
papers' equations (and MDistiller's conventions) with explicit loops where that is clearer.

Used by tests/test_feature_losses.py and tests/test_feature_distillers.py.
"""

import math
from typing import Sequence

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import norm, truncnorm


def as_np(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def block_mean(f: np.ndarray, size: int) -> np.ndarray:
    """Average-pool a (B, C, H, W) map with H, W multiples of `size` down to size x size."""
    b, c, h, w = f.shape
    return f.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def same_size(f_s: np.ndarray, f_t: np.ndarray):
    size = min(f_s.shape[2], f_t.shape[2])
    return block_mean(f_s, size), block_mean(f_t, size)


def unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def at(g_s: Sequence, g_t: Sequence, p: float) -> float:
    total = 0.0
    for f_s, f_t in zip(g_s, g_t):
        f_s, f_t = same_size(as_np(f_s), as_np(f_t))
        a_s = unit_rows((f_s ** p).mean(1).reshape(len(f_s), -1))
        a_t = unit_rows((f_t ** p).mean(1).reshape(len(f_t), -1))
        total += ((a_s - a_t) ** 2).mean()
    return total


def nst(g_s: Sequence, g_t: Sequence) -> float:
    total = 0.0
    for f_s, f_t in zip(g_s, g_t):
        f_s, f_t = same_size(as_np(f_s), as_np(f_t))
        s = unit_rows(f_s.reshape(f_s.shape[0], f_s.shape[1], -1))
        t = unit_rows(f_t.reshape(f_t.shape[0], f_t.shape[1], -1))
        k = lambda a, b: np.mean([(a[i] @ b[i].T) ** 2 for i in range(len(a))])  # noqa: E731
        total += k(t, t) + k(s, s) - 2 * k(s, t)
    return total


def sp(f_s, f_t) -> float:
    f_s, f_t = as_np(f_s), as_np(f_t)
    b = len(f_s)
    g_s = unit_rows(f_s.reshape(b, -1) @ f_s.reshape(b, -1).T)
    g_t = unit_rows(f_t.reshape(b, -1) @ f_t.reshape(b, -1).T)
    return float(np.linalg.norm(g_t - g_s, "fro") ** 2 / b ** 2)


def pkt(f_s, f_t, eps: float = 1e-7) -> float:
    def probabilities(f):
        f = f / (np.sqrt((f ** 2).sum(1, keepdims=True)) + eps)
        n = len(f)
        sim = np.array([[(f[i] @ f[j] + 1) / 2 for j in range(n)] for i in range(n)])
        return sim / sim.sum(1, keepdims=True)

    p_s, p_t = probabilities(as_np(f_s)), probabilities(as_np(f_t))
    return float(np.mean(p_t * np.log((p_t + eps) / (p_s + eps))))


def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d ** 2, d - 0.5).mean())


def rkd(f_s, f_t, distance_weight: float = 25, angle_weight: float = 50) -> float:
    def distances(e):
        d = cdist(e, e)
        return d / d[~np.eye(len(e), dtype=bool)].mean()

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out

    s, t = as_np(f_s).reshape(len(f_s), -1), as_np(f_t).reshape(len(f_t), -1)
    return distance_weight * smooth_l1(distances(s), distances(t)) + angle_weight * smooth_l1(angles(s), angles(t))


def kdsvd(g_s: Sequence, g_t: Sequence, k: int = 1, teacher_gauge: Sequence = ()) -> float:
    """numpy SVD of each (C*H, W) sample matrix; student vectors matched to the teacher's by |cos|.

    A singular vector's sign is arbitrary (LAPACK's choice) and the loss depends on the teacher's:
    `teacher_gauge[i]` (B, W, >= k) gives, per stage, vectors whose signs the teacher's are made
    to agree with.
    """

    def right_vectors(f, n, gauge=None):
        b, c, h, w = f.shape
        vs, ss = [], []
        for i, x in enumerate(f.reshape(b, c * h, w)):
            _, s, vh = np.linalg.svd(x, full_matrices=False)
            v = vh.T[:, :n]
            if gauge is not None:
                v = v * np.sign((v * gauge[i][:, :v.shape[1]]).sum(0))
            vs.append(v / np.linalg.norm(v, axis=0, keepdims=True))
            ss.append(s[:n] / np.linalg.norm(s[:n]))
        return np.stack(vs), np.stack(ss)

    total, prev = 0.0, None
    for stage, (f_s, f_t) in enumerate(zip(g_s, g_t)):
        f_s, f_t = same_size(as_np(f_s), as_np(f_t))
        v_t, s_t = right_vectors(f_t, k, as_np(teacher_gauge[stage]) if teacher_gauge else None)
        v_s, _ = right_vectors(f_s, k + 3)
        aligned = np.zeros_like(v_t)
        for b in range(len(v_t)):
            for j in range(k):
                cos = v_s[b].T @ v_t[b][:, j]
                best = np.argmax(np.abs(cos))
                aligned[b][:, j] = np.sign(cos[best]) * v_s[b][:, best]
        v_t, v_s = v_t * s_t[:, None, :], aligned * s_t[:, None, :]
        if prev is not None:
            p_s, p_t = prev
            rbf_s = np.exp(-((v_s[:, :, None, :] - p_s[:, None, :, :]) ** 2) / 8)
            rbf_t = np.exp(-((v_t[:, :, None, :] - p_t[:, None, :, :]) ** 2) / 8)
            total += ((rbf_s - rbf_t) ** 2).sum() / len(v_s)
        prev = (v_s, v_t)
    return total


def ofd_margin(weight: float, bias: float) -> float:
    """Mean of N(bias, weight^2) conditioned on being negative; -3|weight| when P(x < 0) <= 0.001."""
    s, m = abs(weight), bias
    if norm.cdf(-m / s) <= 0.001:
        return -3 * s
    return float(truncnorm(a=-np.inf, b=(0 - m) / s, loc=m, scale=s).mean())


def partial_l2(source, target, margin) -> float:
    """Per element: target' = max(t, margin_c); no loss if s <= target' <= 0, else (s - target')^2."""
    s, t, m = as_np(source), as_np(target), as_np(margin).reshape(1, -1, 1, 1)
    goal = np.maximum(t, m)
    free = (s <= goal) & (goal <= 0)
    return float(np.where(free, 0.0, (s - goal) ** 2).sum() / s.shape[0])


def vid_nll(pred_mean, target, variance) -> float:
    """mean over elements of -log N(t; mu, var) - 0.5 log(2 pi), per-channel variance."""
    mu, t = as_np(pred_mean), as_np(target)
    var = as_np(variance).reshape(1, -1, 1, 1)
    return float(np.mean(-norm.logpdf(t, loc=mu, scale=np.sqrt(var)) - 0.5 * math.log(2 * math.pi)))
