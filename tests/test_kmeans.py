"""k-means (kmeans.py): recovers clusters, never raises the inertia, reseeds empty clusters."""
import torch

from nanosdm import kmeans as km


def blobs(n_clusters=8, dim=16, n=4000, spread=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * spread
    labels = torch.randint(n_clusters, (n,), generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g), labels, centres


def contingency(a, b, na, nb):
    m = torch.zeros(na, nb)
    m.index_put_((a, b), torch.ones(len(a)), accumulate=True)
    return m


def test_kmeans_recovers_separated_clusters():
    x, truth, centres = blobs()
    for batch_size in (None, 256):
        c, labels = km.kmeans(x, 8, iters=10, seed=0, batch_size=batch_size)
        assert c.shape == (8, 16) and labels.shape == (4000,)
        m = contingency(labels, truth, 8, 8)
        # a one-to-one match between found and true clusters, every point in its true cluster
        assert (m > 0).sum() == 8 and m.max(1).values.sum() == 4000
        # centroids sit on the true centres (noise 1 per dim, ~500 points each -> error ~0.05)
        err = torch.cdist(c, centres).min(1).values
        assert err.max() < 0.3, err


def test_kmeans_inertia_never_increases():
    x, _, _ = blobs(n_clusters=20, dim=8, n=3000, spread=3.0, seed=1)
    curve = [km.assign(x, km.kmeans(x, 30, iters=i, seed=3)[0])[1].sum().item() for i in range(8)]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < curve[0]


def test_kmeans_reseeds_empty_clusters():
    x = torch.tensor([[0.0], [0.1], [10.0], [10.2], [50.0]])
    c = torch.tensor([[0.05], [10.1], [1000.0]])      # the last centroid is nobody's nearest
    labels, dists = km.assign(x, c)
    counts = torch.bincount(labels, minlength=3)
    c = km.reseed_empty(c.clone(), counts, x, dists.clone())
    assert c[2].item() == 50.0                         # moved onto the worst-served point
