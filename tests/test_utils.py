"""utils.py: checkpoints and resuming."""
import torch

from nanosdm import utils


def make(seed):
    torch.manual_seed(seed)
    model, disc = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    model.config = dict(d=3)
    opt, opt_d = torch.optim.AdamW(model.parameters()), torch.optim.AdamW(disc.parameters())
    for o, m in ((opt, model), (opt_d, disc)):   # one step, so the optimizers hold state
        m(torch.randn(4, m.in_features)).sum().backward()
        o.step()
    return model, disc, opt, opt_d


def test_resume_restores_model_optimizer_and_extras(tmp_path):
    path = str(tmp_path / "run.pt")
    model, disc, opt, opt_d = make(0)
    utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                     disc=disc.state_dict(), optimizer_d=opt_d.state_dict(), step=5, history={}))
    assert not list(tmp_path.glob("*.tmp*"))                             # written, then renamed
    model2, disc2, opt2, opt_d2 = make(1)
    ckpt = utils.resume(path, model2, opt2, "cpu", max_steps=10, extra=(("disc", disc2), ("optimizer_d", opt_d2)))
    assert ckpt["step"] == 5
    torch.testing.assert_close(model2.weight, model.weight)
    torch.testing.assert_close(disc2.weight, disc.weight)
    torch.testing.assert_close(opt_d2.state_dict()["state"][0]["exp_avg"], opt_d.state_dict()["state"][0]["exp_avg"])
    # finished, another config, or an extra the checkpoint lacks: start from scratch
    assert utils.resume(path, model2, opt2, "cpu", max_steps=5) is None
    model2.config = dict(d=4)
    assert utils.resume(path, model2, opt2, "cpu", max_steps=10) is None
    model2.config = model.config
    utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                     disc=None, step=5, history={}))
    assert utils.resume(path, model2, opt2, "cpu", max_steps=10, extra=(("disc", disc2),)) is None
