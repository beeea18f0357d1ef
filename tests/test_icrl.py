"""The bandit transformer: tokens, ReLU attention, cached decoding, online play, pretraining data,
the experiments' bad-input rules and one end-to-end run."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import dpt_linear, icrl_distribution_ratio, icrl_linear_bandit
from ictl import cli
from ictl.bandits import algorithms as alg
from ictl.bandits import envs, policy, pretrain, rollout as ro
from ictl.config import ConfigError
from models.attention import attend
from models.gpt import GPT, init_params
from models.gpt_decode import decode_step, init_cache

SPEC = envs.make_spec("dpt_linear", horizon=6)   # A = 10, d = 2: token width 35


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer policy with random N(0, 0.5²) weights (logits far from uniform), both backends. The
    weights come from numpy on `init_params`'s abstract shapes: compiling Flax's initialisers costs
    several CPU seconds here, and any weights serve for these equivalence checks."""
    out = {}
    for att in ("softmax", "relu"):
        pc = policy.model_config(SPEC, n_layers=2, n_heads=2, width=16, attention=att)
        shapes = jax.eval_shape(lambda k, cfg=pc.gpt: init_params(cfg, k), jax.random.key(0))
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)
        out[att] = (pc, params)
    return out


def test_tokens_interleave_action_sets_and_action_rewards():
    rng = np.random.default_rng(0)
    A, d, T = 4, 3, 5
    feats = rng.uniform(-1, 1, (2, A, d)).astype(np.float32)
    acts = rng.integers(0, A, (2, T)).astype(np.int32)
    rews = rng.normal(size=(2, T)).astype(np.float32)
    tok = np.asarray(jax.jit(policy.tokens)(feats, acts, rews))
    assert tok.shape == (2, 2 * T, A * d + d + A + 3)
    for t in range(T):
        s, e = tok[1, 2 * t], tok[1, 2 * t + 1]
        a = acts[1, t]
        np.testing.assert_array_equal(s[:A * d], feats[1].reshape(-1))
        assert np.all(s[A * d:-2] == 0) and list(s[-2:]) == [1, 0]
        assert np.all(e[:A * d] == 0) and list(e[-2:]) == [0, 1]
        np.testing.assert_array_equal(e[A * d:A * d + d], feats[1, a])
        np.testing.assert_array_equal(e[A * d + d:A * d + d + A], np.eye(A)[a])
        assert e[-3] == rews[1, t]


def test_relu_attention_matches_its_formula():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(1, 5, 1, 3)).astype(np.float32) for _ in range(3))
    out = np.asarray(attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), backend="relu"))
    for t in range(5):
        ref = sum(max(q[0, t, 0] @ k[0, s, 0], 0.0) * v[0, s, 0] for s in range(t + 1)) / (t + 1)
        np.testing.assert_allclose(out[0, t, 0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("att", ["softmax", "relu"])
def test_cached_decoding_equals_the_full_forward(tiny, att):
    pc, params = tiny[att]
    toks = jax.random.normal(jax.random.key(2), (3, 2 * SPEC.horizon, policy.token_width(SPEC)))
    full = np.asarray(jax.jit(GPT(pc.gpt).apply)(params, toks))  # jitted: one compile, not one per op
    cache = init_cache(pc.gpt, 3)
    step = jax.jit(lambda c, x, i: decode_step(pc.gpt, params, c, x, i))
    outs = []
    for i in range(toks.shape[1]):
        o, cache = step(cache, toks[:, i], i)
        outs.append(np.asarray(o))
    assert np.abs(full).max() > 1.0  # not a trivially small output
    np.testing.assert_allclose(np.stack(outs, 1), full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


def test_online_play_samples_from_the_full_models_logits(tiny):
    """Replaying play()'s own tokens through the uncached model gives logits whose samples (same
    keys) are play()'s actions: the jitted scan feeds its actions and rewards back correctly."""
    pc, params = tiny["softmax"]
    b = envs.sample_bandits(jax.random.key(3), SPEC, 4)
    key = jax.random.key(4)
    a, r = policy.play(pc, params, SPEC, b, key)

    @jax.jit
    def replay(a, r):
        logits_TxBxA = jnp.swapaxes(policy.action_logits(pc, params, policy.tokens(b.feats, a, r), b.feats), 0, 1)
        return jax.vmap(lambda t, lg: jax.random.categorical(jax.random.fold_in(key, t), lg, axis=-1),
                        out_axes=1)(jnp.arange(SPEC.horizon), logits_TxBxA)

    np.testing.assert_array_equal(np.asarray(a), np.asarray(replay(a, r)))
    assert len(np.unique(np.asarray(a))) > 2
    # rewards are the instances' draws for the chosen actions
    a_np, noise = np.asarray(a), np.asarray(b.noise)
    ref_r = np.take_along_axis(np.asarray(b.means), a_np, 1) + SPEC.noise_std * np.take_along_axis(
        noise[:, :SPEC.horizon], a_np[..., None], 2)[..., 0]
    np.testing.assert_allclose(np.asarray(r), ref_r, rtol=1e-6, atol=1e-6)  # float32 mean + σ·ε
    lin = envs.make_spec("linear", horizon=6)  # A = 10, d = 5: the model was built for d = 2
    fake = envs.Bandit(np.zeros((2, 10, 5), np.float32), np.zeros((2, 5), np.float32),
                       np.zeros((2, 10), np.float32), np.zeros((2, 6, 10), np.float32))
    with pytest.raises(ValueError, match="n_actions"):
        policy.play(pc, params, lin, fake, key)


def test_pretraining_labels_and_fixed_dataset():
    hp = alg.params_for(SPEC)
    key = jax.random.key(5)
    two = (pretrain.DataSpec("uniform", "optimal", hp=hp), pretrain.DataSpec("uniform", "same", hp=hp, n_trajectories=1))
    (b_envs, tr), (e1, t1) = jax.jit(lambda k: tuple(pretrain.sample_batch(SPEC, dat, k, 6) for dat in two))(key)
    np.testing.assert_array_equal(tr.labels, jnp.broadcast_to(jnp.argmax(b_envs.means, 1)[:, None], tr.labels.shape))
    assert len(np.unique(np.asarray(b_envs.theta[:, 0]))) == 6  # fresh instances
    # a data set of one trajectory: every row is that trajectory
    np.testing.assert_array_equal(t1.actions[0], t1.actions[5])
    np.testing.assert_array_equal(e1.theta[0], e1.theta[3])
    np.testing.assert_array_equal(t1.labels, t1.actions)
    assert len(np.unique(np.asarray(t1.actions[0]))) > 1
    ce, acc = pretrain.cross_entropy(jnp.log(jnp.array([[[0.5, 0.25, 0.25]]])), jnp.array([[1]]))
    assert float(ce) == pytest.approx(np.log(4)) and float(acc) == 0.0
    for bad, word in [(pretrain.DataSpec("nope"), "algorithm"), (pretrain.DataSpec("linucb", "nope"), "expert"),
                      (pretrain.DataSpec("linucb", uniform_share=1.5), "uniform_share")]:
        with pytest.raises(ValueError, match=word):
            pretrain.check_data(SPEC, bad)


def test_distribution_ratio_kls_closed_form():
    """data_kl(p, s) = Σ_t Σ_a p log(p / (s/A + (1 − s) p)): 0 for s = 0 or a uniform expert; for a
    deterministic expert each step contributes −log(s/A + 1 − s). kl_sum(p, p) = 0."""
    T, A = 7, 5
    onehot = np.zeros((2, T, A), np.float32)
    onehot[:, :, 2] = 1.0
    unif = np.full((1, T, A), 1.0 / A, np.float32)
    for s in (0.0, 0.5, 0.9):
        np.testing.assert_allclose(icrl_distribution_ratio.data_kl(onehot, s), -T * np.log(s / A + 1 - s),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(icrl_distribution_ratio.data_kl(unif, s), 0.0, atol=1e-5)
    mix = np.full((1, T, A), 0.1, np.float32)
    mix[..., 0] = 0.6
    np.testing.assert_allclose(icrl_distribution_ratio.kl_sum(mix, mix), 0.0, atol=1e-6)
    np.testing.assert_allclose(icrl_distribution_ratio.kl_sum(onehot, unif), T * np.log(A), rtol=1e-5)


@pytest.mark.parametrize("module, key, value, needle", [
    (icrl_linear_bandit, "env", "nope", "config.env='nope'"),
    (icrl_linear_bandit, "horizon", 0, "config.horizon=0"),
    (icrl_linear_bandit, "noise_std", -1.0, "config.noise_std=-1.0"),
    (icrl_linear_bandit, "ad_algorithms", ("linucb", "nope"), "config.ad_algorithms"),
    (icrl_linear_bandit, "attention", "linear", "config.attention='linear'"),
    (icrl_distribution_ratio, "n_actions", 7, "config.n_actions=7"),      # Bernoulli arms must match d
    (icrl_distribution_ratio, "expert", "lin_ts", None),                  # fine: lin_ts runs on any env
    (icrl_distribution_ratio, "baselines", ("gauss_ts", "beta_ts", "x"), "config.baselines"),
    (icrl_distribution_ratio, "uniform_shares", (0.5, 0.0), "config.uniform_shares"),
    (dpt_linear, "offline", "beta_ts", "config.offline='beta_ts'"),      # Bernoulli-only algorithm
    (dpt_linear, "horizon", -3, "config.horizon=-3"),
])
def test_bad_config_values(module, key, value, needle):
    c = module.get_config("quick")
    c[key] = value
    if needle is None:
        module.validate(c)
        return
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        module.validate(c)


@pytest.mark.parametrize("args, needle", [
    (["run", "icrl_linear_bandit", "--config.env=cartpole"], "config.env='cartpole'"),
    (["run", "icrl_distribution_ratio", "--config.horizon=0"], "config.horizon=0"),
    (["run", "dpt_linear", "--config.noise_std=-0.3"], "config.noise_std=-0.3"),
    (["run", "dpt_linear", "--config.offline=thompson"], "config.offline='thompson'"),
    (["run", "icrl_distribution_ratio", "--config.n_actions=3"], "config.n_actions=3"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    wd = tmp_path / "w"
    code = cli.main(args + ["--workdir", str(wd)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not wd.exists()


@pytest.mark.slow
def test_dpt_linear_end_to_end(tmp_path):
    """A tiny run: files, rows, and a DPT that already beats uniform play after 150 steps."""
    c = dpt_linear.get_config("quick")
    c.horizon, c.n_layers, c.width, c.train_steps, c.warmup, c.batch = 8, 1, 16, 150, 10, 16
    c.eval_envs, c.log_every, c.ckpt_every, c.lr = 256, 50, 150, 3e-3
    c.baselines = ("gauss_ts", "linucb")
    rows = dpt_linear.run(c, tmp_path)
    for stem in ("dpt_linear.png", "dpt_linear.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    fin = res["final"]
    assert rows[0]["quantity"].startswith("DPT regret at T=8 vs its data's gauss_ts")
    # per-arm TS still explores at T = 8 (≥ 8 of 10 arms untried); DPT already exploits the structure
    assert fin["DPT (gauss_ts data)"]["mean"] < fin["gauss_ts"]["mean"] - 3 * fin["gauss_ts"]["sem"]
    assert res["train"]["last_acc"] > 0.3  # 10 arms: chance 0.1
