"""
k-means in torch: k-means++ seeding, then Lloyd steps (full batch or mini-batch), CPU or GPU.

The units stage clusters MFCC frames (HuBERT's teacher) and a middle layer of its encoder (the
units); the codec seeds its residual codebooks with it. Squared distances come from one matmul,
in chunks, so a million frames by a few hundred centroids never needs an [N, k, D] tensor.

    centroids, labels = kmeans(x, k=100)       # x [N, D]
    labels, sq_dist = assign(y, centroids)     # nearest centroid of new rows
"""
import torch

KMEANS_CHUNK = 16384      # rows per distance matrix: N x k distances at once would not fit for big N


def sq_distances(x, c):
    """Squared Euclidean distances [N, k] as |x|^2 - 2 x.c + |c|^2 (one matmul, no [N, k, D] tensor)."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)   # rounding can make a zero distance slightly negative


def assign(x, c):
    """Nearest centroid of every row: (labels [N] long, squared distance [N]), in chunks."""
    labels, dists = [], []
    for i in range(0, x.shape[0], KMEANS_CHUNK):
        d, l = sq_distances(x[i:i + KMEANS_CHUNK], c).min(1)
        labels.append(l)
        dists.append(d)
    return torch.cat(labels), torch.cat(dists)


def kmeans_pp_init(x, k, gen):
    """k-means++: each new centroid is a data point drawn with probability ~ squared distance to the
    nearest centroid chosen so far, which spreads the seeds over the data."""
    n = x.shape[0]
    centroids = torch.empty(k, x.shape[1], device=x.device, dtype=x.dtype)
    centroids[0] = x[torch.randint(n, (1,), generator=gen, device=x.device)]
    closest = sq_distances(x, centroids[:1]).squeeze(1)
    for j in range(1, k):
        if closest.sum() <= 0:   # fewer distinct points than k: any point will do
            idx = torch.randint(n, (1,), generator=gen, device=x.device)
        else:
            idx = torch.multinomial(closest, 1, generator=gen)
        centroids[j] = x[idx]
        closest = torch.minimum(closest, sq_distances(x, centroids[j:j + 1]).squeeze(1))
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


def kmeans(x, k, iters=20, seed=0, batch_size=None):
    """x [N, D] float (CPU or GPU) -> (centroids [k, D], labels [N]).
    batch_size=None: full-batch Lloyd, `iters` steps (the inertia never goes up).
    batch_size=B: mini-batch k-means (Sculley 2010), `iters` passes over shuffled batches of B rows;
    each centroid moves toward its batch mean with step 1/(points it has seen), so it converges
    to the running mean of everything assigned to it. Cheaper per pass for large N."""
    x = x.detach().float()
    n, dim = x.shape
    assert n >= k, f"k-means needs at least k={k} points, got {n}"
    gen = torch.Generator(device=x.device).manual_seed(seed)
    centroids = kmeans_pp_init(x, k, gen)
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
    labels, _ = assign(x, centroids)
    return centroids, labels
