"""
The units' pictures, drawn by the evaluation (eval/metrics.py) and notebooks/02_units.ipynb: which
phones each unit hears (p(phone | unit): a staircase when the units follow the phones, a smear when
they do not), and one utterance's log-mel spectrogram with its MFCC clusters, its learned units and
its phones under it.
"""
import torch

from nanosdm import utils
from nanosdm.corpus import audio
from nanosdm.units import FRAME_RATE, HOP, N_MELS


def plot_cooccurrence(ids, labels, inventory, k, metrics, path, max_phones=40):
    """p(phone | unit) for each system (ids: {name: unit ids per utterance}), the most frequent
    phones only; units sorted by their dominant phone, so a good labelling is a staircase and a
    poor one a smear."""
    spoken = torch.tensor([p is not None for u in labels for p in u])
    phone_ids = torch.tensor([inventory.index(p) for u in labels for p in u if p is not None])
    order = torch.bincount(phone_ids, minlength=len(inventory)).argsort(descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    n_rows = min(max_phones, len(inventory))
    fig, axes = utils.figure(1, len(ids), figsize=(7 * len(ids), 0.2 * n_rows + 2))
    for ax, (name, per_utterance) in zip(axes, ids.items()):
        joint = torch.zeros(len(inventory), k)
        joint.index_put_((rank[phone_ids], torch.cat(per_utterance)[spoken]), torch.ones(len(phone_ids)), accumulate=True)
        cond = joint / joint.sum(0, keepdim=True).clamp_min(1)
        dominant, share = cond.max(0)
        columns = sorted(range(k), key=lambda j: (dominant[j].item(), -share[j].item()))
        ax.imshow(cond[:n_rows, columns].numpy(), aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(n_rows), [inventory[i] for i in order[:n_rows].tolist()], fontsize=7)
        ax.set_xlabel("unit (sorted by dominant phone)")
        ax.set_title(f"{name}: PNMI {metrics[f'units_pnmi_{name}']:.3f}, "
                     f"phone purity {metrics[f'units_phone_purity_{name}']:.3f}")
    axes[0].set_ylabel(f"phone (the {n_rows} most frequent)")
    utils.save_figure(fig, path)


def plot_utterance(wav, mfcc_ids, hubert_ids, phone_labels, path, seconds=3.0):
    """Log-mel spectrogram with, under it, the MFCC-cluster and learned-unit sequences (one box per
    run of equal units) and the phones."""
    n = min(len(phone_labels), int(seconds * FRAME_RATE))
    mel = audio.log_mel(wav[:n * HOP], n_mels=N_MELS)
    fig, axes = utils.figure(4, 1, figsize=(12, 5.5), sharex=True, gridspec_kw=dict(height_ratios=[4, 1, 1, 1]))
    axes[0].imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, n / FRAME_RATE, 0, N_MELS))
    axes[0].set_ylabel("mel band")
    rows = [("MFCC k-means", [str(u) for u in mfcc_ids[:n].tolist()]),
            ("learned units", [str(u) for u in hubert_ids[:n].tolist()]),
            ("phones", [p or "" for p in phone_labels[:n]])]
    for ax, (name, seq) in zip(axes[1:], rows):
        start = 0
        for i in range(1, n + 1):
            if i == n or seq[i] != seq[start]:
                ax.axvline(start / FRAME_RATE, color="grey", lw=0.5)
                ax.text((start + i) / 2 / FRAME_RATE, 0.5, seq[start], ha="center", va="center",
                        fontsize=8 if name == "phones" else 6, rotation=0 if name == "phones" else 90)
                start = i
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    axes[-1].set_xlabel("time (s)")
    utils.save_figure(fig, path)
