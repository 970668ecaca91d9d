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


def test_a_partial_run_resumes_only_under_the_same_settings(tmp_path, capsys):
    path = str(tmp_path / "run.pt")
    model, _, opt, _ = make(0)
    settings = dict(seed=1, text_lr=0.006, text_batch_size=32, text_max_steps=10)
    utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                     settings=settings, step=5, history={}))
    model2, _, opt2, _ = make(1)
    assert utils.resume(path, model2, opt2, "cpu", max_steps=10, settings=dict(settings))["step"] == 5
    # a changed learning rate (or batch, or length): the steps taken followed another run, start over, say which
    assert utils.resume(path, model2, opt2, "cpu", max_steps=10, settings=dict(settings, text_lr=0.001)) is None
    assert "other settings (text_lr=0.006 -> 0.001): training from scratch" in capsys.readouterr().out
    assert utils.resume(path, model2, opt2, "cpu", max_steps=20, settings=dict(settings, text_max_steps=20)) is None
    assert "text_max_steps=10 -> 20" in capsys.readouterr().out
    # a checkpoint written before checkpoints recorded their settings resumes as it always did
    utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                     step=5, history={}))
    assert utils.resume(path, model2, opt2, "cpu", max_steps=10, settings=settings)["step"] == 5


def test_run_settings_are_the_runners_or_the_stage_keys():
    cfg = dict(seed=1, text_lr=0.1, text_ckpt_interval=3, units_lr=0.2, device="cpu")
    # the checkpoint interval changes no step: a run may resume under another one
    assert utils.run_settings(cfg, "text") == dict(seed=1, text_lr=0.1)
    assert utils.run_settings(dict(cfg, train_settings=dict(seed=1, dual_context=8)), "text") == dict(seed=1, dual_context=8)
