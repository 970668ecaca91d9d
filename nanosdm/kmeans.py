"""
k-means in torch: greedy k-means++ seeding, then Lloyd steps (full batch or mini-batch), optionally
restarted from new seeds, keeping the fit of lowest inertia; CPU or GPU.

The units stage clusters MFCC frames (HuBERT's teacher) and a middle layer of its encoder (the
units); the codec seeds its residual codebooks with it. Squared distances come from one matmul,
in chunks, so a million frames by a few hundred centroids never needs an [N, k, D] tensor.

    centroids, labels = kmeans(x, k=100)       # x [N, D]
    labels, sq_dist = assign(y, centroids)     # nearest centroid of new rows
"""
import math

import torch

KMEANS_CHUNK = 16384      # rows per distance matrix: N x k distances at once would not fit for big N
KMEANS_RESTARTS = 2       # fits per call, the lowest inertia kept (see kmeans_pp_init for the numbers)


def sq_distances(x, c, x_sq=None):
    """Squared Euclidean distances [N, k] as |x|^2 - 2 x.c + |c|^2 (one matmul, no [N, k, D] tensor).
    x_sq: |x|^2 [N] when the caller has it already (seeding asks for the same rows k times)."""
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    d = torch.addmm(x_sq[:, None] + (c * c).sum(1)[None, :], x, c.T, alpha=-2.0)
    return d.clamp_min_(0.0)   # rounding can make a zero distance slightly negative


def assign(x, c):
    """Nearest centroid of every row: (labels [N] long, squared distance [N]), in chunks.
    The outputs are allocated once: small per-chunk results kept in a list between the big distance
    blocks made the CPU allocator keep every block (1M rows x 500 centroids: 3.4 GB instead of 0.2)."""
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dists = x.new_empty(x.shape[0])
    for i in range(0, x.shape[0], KMEANS_CHUNK):
        dists[i:i + KMEANS_CHUNK], labels[i:i + KMEANS_CHUNK] = sq_distances(x[i:i + KMEANS_CHUNK], c).min(1)
    return labels, dists


def distances_to(x, x_sq, c):
    """sq_distances(x, c) [N, m] for a few centroids c [m, D], in chunks of rows (m is small here:
    the result is no bigger than x, but the matmul's temporaries stay chunk-sized)."""
    return torch.cat([sq_distances(x[i:i + KMEANS_CHUNK], c, x_sq[i:i + KMEANS_CHUNK])
                      for i in range(0, x.shape[0], KMEANS_CHUNK)])


def kmeans_pp_init(x, k, gen, candidates=None):
    """Greedy k-means++ (Arthur & Vassilvitskii 2007, and what scikit-learn does): every new centroid
    is one of `candidates` data points drawn with probability ~ squared distance to the nearest
    centroid chosen so far, the one that lowers the potential (the sum of those distances) most.
    Plain k-means++ (one draw) often puts two seeds in one true cluster and none in another, and
    Lloyd steps never undo that. In many dimensions the far tails of the clusters already seeded
    hold much of the potential (50 Gaussians in 39 dims, one left unseeded: about 3/4 of it), so the
    usual 2 + ln k candidates still miss the last clusters; default: twice that. `python -m tests.test_kmeans`
    measures how often each variant ends far above the generating clusters' inertia (docs/results.md)."""
    n = x.shape[0]
    candidates = candidates or 2 * (2 + int(math.log(k)))
    x_sq = (x * x).sum(1)
    centroids = torch.empty(k, x.shape[1], device=x.device, dtype=x.dtype)
    centroids[0] = x[torch.randint(n, (1,), generator=gen, device=x.device)]
    closest = distances_to(x, x_sq, centroids[:1]).squeeze(1)
    for j in range(1, k):
        if closest.sum() <= 0:   # fewer distinct points than k: any point will do
            idx = torch.randint(n, (1,), generator=gen, device=x.device)
        else:
            idx = torch.multinomial(closest, candidates, replacement=True, generator=gen)
        # [N, candidates]: the closest distance if each candidate were added, and its potential
        d = torch.minimum(distances_to(x, x_sq, x[idx]), closest[:, None])
        best = d.sum(0).argmin()
        centroids[j] = x[idx[best]]
        closest = d[:, best].contiguous()
    return centroids


def reseed_empty(centroids, counts, x, dists):
    """Move every centroid that got no points onto the points farthest from their own centroid:
    those are the ones worst served, and giving them a centroid lowers the inertia the most."""
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty) > 0:
        far = dists.topk(min(len(empty), len(dists))).indices
        centroids[empty[:len(far)]] = x[far]
        dists[far] = 0.0   # so that a second call does not pick them again
    return centroids


def lloyd(x, centroids, iters, gen, batch_size):
    """Refine centroids [k, D] on x: `iters` full-batch Lloyd steps (batch_size=None) or mini-batch
    passes (batch_size=B). Returns the centroids."""
    n, dim = x.shape
    k = centroids.shape[0]
    seen = torch.zeros(k, device=x.device)       # mini-batch: points each centroid has absorbed
    for _ in range(iters):
        if batch_size is None:
            labels, dists = assign(x, centroids)
            counts = torch.bincount(labels, minlength=k).float()
            sums = torch.zeros(k, dim, device=x.device).index_add_(0, labels, x)
            nonempty = counts > 0
            centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
            centroids = reseed_empty(centroids, counts, x, dists)
        else:
            order = torch.randperm(n, generator=gen, device=x.device)
            epoch_counts = torch.zeros(k, device=x.device)
            for i in range(0, n, batch_size):
                xb = x[order[i:i + batch_size]]
                labels, dists = assign(xb, centroids)
                counts = torch.bincount(labels, minlength=k).float()
                sums = torch.zeros(k, dim, device=x.device).index_add_(0, labels, xb)
                seen += counts
                epoch_counts += counts
                step = counts / seen.clamp_min(1.0)   # 0 for centroids with no point in this batch
                centroids += step[:, None] * (sums / counts.clamp_min(1.0)[:, None] - centroids)
            if (epoch_counts == 0).any():
                centroids = reseed_empty(centroids, epoch_counts, xb, dists)
                seen[epoch_counts == 0] = 0.0
    return centroids


def kmeans(x, k, iters=20, seed=0, batch_size=None, n_init=KMEANS_RESTARTS, candidates=None):
    """x [N, D] float (CPU or GPU) -> (centroids [k, D], labels [N]).
    batch_size=None: full-batch Lloyd, `iters` steps (the inertia never goes up).
    batch_size=B: mini-batch k-means (Sculley 2010), `iters` passes over shuffled batches of B rows;
    each centroid moves toward its batch mean with step 1/(points it has seen), so it converges
    to the running mean of everything assigned to it. Cheaper per pass for large N.
    n_init: fits from that many seedings (each costs a seeding and `iters` steps), the one of lowest
    inertia is kept. candidates: draws per new seed (None: 2 (2 + ln k); 1: plain k-means++)."""
    x = x.detach().float()
    n = x.shape[0]
    assert n >= k, f"k-means needs at least k={k} points, got {n}"
    gen = torch.Generator(device=x.device).manual_seed(seed)
    best = None
    for _ in range(n_init):
        centroids = lloyd(x, kmeans_pp_init(x, k, gen, candidates), iters, gen, batch_size)
        labels, dists = assign(x, centroids)
        inertia = dists.sum().item()
        if best is None or inertia < best[0]:
            best = (inertia, centroids, labels)
    return best[1], best[2]
