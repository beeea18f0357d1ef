"""The four gpicl experiments end to end at toy size, their metrics, and the bad-input rules."""
import json
import pathlib

import numpy as np
import pytest

from experiments import gpicl_plateau, gpicl_state, gpicl_transfer, gpicl_transition
from ictl import cli
from ictl import data as idata
from ictl import gpicl as gp
from ictl.config import ConfigError

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    for name in ("digits", "iris"):
        idata.prepare(name, str(d))
    return str(d)


@pytest.fixture
def figures(monkeypatch):
    """The experiments' figures, kept open for inspection; written as one low-resolution PNG each
    (ictl.results.save_figure's PNG + PDF rendering would cost seconds per figure here)."""
    import matplotlib.pyplot as plt

    made = {}

    def save(fig, workdir, stem):
        made[stem] = fig
        fig.savefig(pathlib.Path(workdir) / f"{stem}.png", dpi=20)
        plt.close(fig)

    for m in (gpicl_transition, gpicl_plateau, gpicl_state, gpicl_transfer):
        monkeypatch.setattr(m, "save_figure", save)
    return made


def toy(module, data_dir, **kw):
    c = module.get_config("quick")
    c.data_dir, c.download = data_dir, False
    c.seq_len, c.d_proj, c.width, c.n_heads, c.n_layers = 12, 8, 8, 2, 1
    c.batch, c.train_steps, c.warmup, c.log_every, c.ckpt_every = 8, 4, 0, 2, 4
    c.eval_prompts, c.baseline_positions, c.gd_steps = 16, "0,1,5,11", 5
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.slow
def test_transition_end_to_end(data_dir, tmp_path, figures):
    # a pool of 2^0 tasks and fresh tasks at toy()'s 4 steps: the same two training programs as gpicl_plateau's
    # and gpicl_state's transformer (2^0) and gpicl_transfer's (fresh) in the next test, which load them from
    # the compilation cache (tracing and lowering only: 23 → 20 CPU-s there, cold cache)
    c = toy(gpicl_transition, data_dir, log2_tasks="0,fresh")
    rows = gpicl_transition.run(c, tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "gpicl_transition.png").exists() and (tmp_path / "tasks_2^0" / "seed_0" / "ckpt").exists()
    s0, sf = res["sweep"]
    assert s0["seeds"] == [0] and len(s0["unseen_last"]) == 1 and sf["seen_last"] is None
    assert len(res["curves"]["2^0"]["seen"]["acc"]) == 12 and res["curves"]["fresh"]["seen"] is None
    assert len(res["curves"]["2^0"]["unseen"]["acc"]) == 12
    assert res["baselines"]["logistic regression (GD on the prefix)"]["positions"] == [0, 1, 5, 11]
    assert all(r["verdict"] in ("reproduced", "not reproduced", "informational") for r in rows)
    assert rows[0]["claim"] == "at_most" and rows[0]["tol"] > 0 and rows[0]["why"]
    left, right = figures["gpicl_transition"].axes
    assert [t.get_text() for t in left.texts] == [s0["regime"].replace(" ", "\n"), sf["regime"].replace(" ", "\n")]
    assert len(left.patches) == 2                                      # one regime band per pool size
    assert len(right.lines) == 3 + 2 + 1                               # unseen ×2, seen ×1, 2 baselines, chance


def test_regime_rule():
    def cv(acc):
        return gp.Curve(np.asarray(acc, float), np.zeros(len(acc)), np.zeros(len(acc)), np.arange(len(acc)))

    ch = 0.1
    assert gpicl_transition.regime(cv([0.12, 0.15]), cv([0.1, 0.11]), ch) == "plateau"
    assert gpicl_transition.regime(cv([0.9, 0.95]), cv([0.1, 0.1]), ch) == "memorisation"
    assert gpicl_transition.regime(cv([0.1, 0.9]), cv([0.1, 0.12]), ch) == "task identification"
    assert gpicl_transition.regime(cv([0.1, 0.9]), cv([0.1, 0.6]), ch) == "general"   # 0.5 ≥ ½·0.8
    assert gpicl_transition.regime(None, cv([0.1, 0.6]), ch) == "general"


def test_plateau_length_rule():
    f = gpicl_plateau.plateau_length
    lvl = np.log(10)
    assert f([50, 100, 150, 200], [2.30, 2.31, 2.0, 1.5], level=lvl, delta=0.1, total=200) == (150, True)
    assert f([50, 100, 150], [2.1, 2.31, 2.0], level=lvl, delta=0.1, total=150) == (150, True)   # must stay below
    assert f([50, 100], [2.30, 2.29], level=lvl, delta=0.1, total=100) == (100, False)          # censored
    assert f([50, 100], [1.0, 0.9], level=lvl, delta=0.1, total=100) == (50, True)


@pytest.mark.slow
def test_plateau_state_transfer_end_to_end(data_dir, tmp_path, figures):
    c = toy(gpicl_plateau, data_dir, log2_tasks="0", batch_sizes="8", bias_batch=8, bias_frac=0.25)
    rows = gpicl_plateau.run(c, tmp_path / "plateau")
    res = json.loads((tmp_path / "plateau" / "results.json").read_text())
    assert [r["batch"] for r in res["runs"]] == [8, 8] and res["runs"][-1]["metric"] == "loss_unbiased"
    assert len(res["runs"][0]["losses"]) == 2                          # logged at steps 2 and 4
    assert rows[0]["quantity"].startswith("plateau length")
    curves_ax = figures["gpicl_plateau"].axes[0]
    assert len(curves_ax.lines) == 2 + 2 + sum(r["escaped"] for r in res["runs"])   # curves, ln 10 lines, escapes
    c = toy(gpicl_state, data_dir, log2_tasks="0", kinds="transformer,matrix")  # the LSTM: tests/test_recurrent.py
    gpicl_state.run(c, tmp_path / "state")
    res = json.loads((tmp_path / "state" / "results.json").read_text())
    m = res["models"]
    assert len(res["seen_curves"]["matrix"]["acc"]) == 12 and 0 <= m["matrix"]["seen_last"] <= 1   # pool of 2^0 tasks
    n = m["transformer"]["params"]
    assert abs(m["matrix"]["params"] - n) / n < 0.2                                 # matched parameter counts
    # state: KV cache 2·D·layers·L = 2·8·1·12 = 192 floats; matrix H·K² + D = 2·(w/2)² + w at its width w
    w = m["matrix"]["width"]
    assert m["transformer"]["state_floats"] == 192 and m["matrix"]["state_floats"] == 2 * (w // 2) ** 2 + w
    assert gpicl_state.state_floats(c, "lstm", w) == 2 * w < m["matrix"]["state_floats"]
    c = toy(gpicl_transfer, data_dir, test_sets="iris")
    rows = gpicl_transfer.run(c, tmp_path / "transfer")
    res = json.loads((tmp_path / "transfer" / "results.json").read_text())
    assert res["results"]["iris"]["n_classes"] == 3 and len(rows) == 2
    assert (tmp_path / "transfer" / "gpicl_transfer.png").exists()


@pytest.mark.parametrize("override, message", [
    ("--config.dataset=cifar10", "config.dataset='cifar10': allowed one of"),
    ("--config.log2_tasks=-3", "k must not be negative"),
    ("--config.seq_len=1", "config.seq_len=1: allowed an integer >= 2"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(data_dir, tmp_path, capsys, override, message):
    wd = tmp_path / "run"
    rc = cli.main(["run", "gpicl_transition", "--workdir", str(wd), f"--config.data_dir={data_dir}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0] and not wd.exists()


def test_cli_data_dir_rules(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    wd = tmp_path / "run"
    rc = cli.main(["run", "gpicl_state", "--workdir", str(wd), f"--config.data_dir={f / 'tfds'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "config.data_dir=" in err[0] and "written" in err[0]
    empty = tmp_path / "empty"
    rc = cli.main(["run", "gpicl_transfer", "--workdir", str(wd), f"--config.data_dir={empty}", "--config.download=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not prepared" in err[0] and "python -m ictl.data prepare digits" in err[0]
    assert not wd.exists() and not empty.exists()
    with pytest.raises(ConfigError, match="test_sets"):
        c = gpicl_transfer.get_config()
        c.data_dir, c.test_sets = str(empty), "iris,svhn"
        gpicl_transfer.validate(c)


@pytest.mark.parametrize("module", [gpicl_transition, gpicl_plateau, gpicl_state, gpicl_transfer])
@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_configs_are_consistent(module, scale):
    """Both tiers' keys pass the checks that need no data: positions inside the sequence, task lists."""
    c = module.get_config(scale)
    pos = gp.parse_positions(c.baseline_positions, c.seq_len)
    assert pos[-1] == c.seq_len - 1 and c.seq_len == (50 if scale == "quick" else 100)
    assert gp.parse_log2_tasks(c.log2_tasks)
    assert 0 <= c.warmup < c.train_steps and c.width % c.n_heads == 0


def test_boundary_must_be_in_the_sweep(data_dir):
    c = gpicl_transition.get_config()
    c.data_dir, c.download, c.boundary = data_dir, False, "4,fresh"
    gpicl_transition.validate(c)
    c.boundary = "6"
    with pytest.raises(ConfigError, match="config.boundary='6': allowed a subset of log2_tasks"):
        gpicl_transition.validate(c)
