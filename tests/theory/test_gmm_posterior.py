"""GMM prior × linear-Gaussian likelihood: the worked example, batch = sequential, brute-force joint
Gaussians for the evidence and the filter, a grid check of Bayes' rule, MC KL, bad input."""
import math

import jax
import numpy as np
import pytest
from scipy import stats

from ictl.theory import gmm_posterior as gp


def _random_gmm(rng, K, d):
    w = rng.dirichlet(np.ones(K))
    mu = rng.normal(scale=2.0, size=(K, d))
    A = rng.normal(size=(K, d, d))
    cov = A @ np.swapaxes(A, -1, -2) + 0.3 * np.eye(d)
    return w, mu, cov


def test_worked_example():
    """π = (½, ½), μ = (−2, 2), σ² = 1, H = R = 1, y = 1: S = 2, K = ½, so μ' = μ + ½(1 − μ) = (−0.5, 1.5),
    σ'² = ½; log π'_k ∝ −(1 − μ_k)²/4, so π'_1 = 1/(1 + e²) = 0.1192; log p(y) = log(½e^{−9/4} + ½e^{−1/4}) − ½ log 4π."""
    w, mu, cov, le = gp.gmm_posterior(np.array([0.5, 0.5]), np.array([[-2.0], [2.0]]), np.ones((2, 1, 1)),
                                      np.array([[1.0]]), H=np.eye(1), R=np.eye(1))
    np.testing.assert_allclose(w, [1 / (1 + math.e**2), 1 - 1 / (1 + math.e**2)], atol=1e-12)
    np.testing.assert_allclose(w, [0.1192, 0.8808], atol=5e-5)
    np.testing.assert_allclose(mu[:, 0], [-0.5, 1.5], atol=1e-12)
    np.testing.assert_allclose(cov[:, 0, 0], [0.5, 0.5], atol=1e-12)
    want = math.log(0.5 * math.exp(-9 / 4) + 0.5 * math.exp(-1 / 4)) - 0.5 * math.log(4 * math.pi)
    assert abs(float(le) - want) < 1e-12
    assert abs(float(le) - (-2.0817)) < 1e-4  # the rounding; −2.081731…
    assert w.dtype == np.float64


def test_batch_equals_sequential_and_information_form():
    rng = np.random.default_rng(0)
    K, d, m, n = 3, 2, 3, 6
    w, mu, cov = _random_gmm(rng, K, d)
    H = rng.normal(size=(m, d))
    A = rng.normal(size=(m, m))
    R = A @ A.T + 0.5 * np.eye(m)
    y = rng.normal(size=(n, m)) * 2
    w1, mu1, cov1, le1 = gp.gmm_posterior(w, mu, cov, y, H=H, R=R)
    ws, mus, covs, total = w, mu, cov, 0.0
    for i in range(n):
        ws, mus, covs, le = gp.gmm_posterior(ws, mus, covs, y[i:i + 1], H=H, R=R)
        total += float(le)
    for a, b in ((w1, ws), (mu1, mus), (cov1, covs)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    assert abs(float(le1) - total) < 1e-10  # chain rule: log p(y_1..n) = Σ_i log p(y_i | y_<i)
    info = np.linalg.inv(np.linalg.inv(cov) + n * H.T @ np.linalg.inv(R) @ H)
    np.testing.assert_allclose(cov1, info, atol=1e-10)


def test_evidence_against_the_stacked_joint_gaussian():
    """Per component vec(y) ~ N(1⊗Hμ_k, 11ᵀ⊗HΣ_kHᵀ + I⊗R): the within-sample term must make the two agree;
    the posterior weights are π_k N_k / Σ_j π_j N_j of the same joint densities."""
    rng = np.random.default_rng(1)
    K, d, m, n = 2, 2, 2, 4
    w, mu, cov = _random_gmm(rng, K, d)
    H = rng.normal(size=(m, d))
    R = np.array([[1.0, 0.3], [0.3, 0.5]])
    y = rng.normal(size=(n, m))
    wp, _, _, le = gp.gmm_posterior(w, mu, cov, y, H=H, R=R)
    ones = np.ones((n, n))
    logs = np.array([np.log(w[k]) + stats.multivariate_normal(np.tile(H @ mu[k], n),
                     np.kron(ones, H @ cov[k] @ H.T) + np.kron(np.eye(n), R)).logpdf(y.reshape(-1)) for k in range(K)])
    lse = np.logaddexp.reduce(logs)
    assert abs(float(le) - lse) < 1e-10
    np.testing.assert_allclose(wp, np.exp(logs - lse), atol=1e-12)


def test_posterior_moments_match_bayes_rule_on_a_grid():
    """1-D, n = 3: prior × likelihood on a fine grid (trapezoid) vs the closed-form mixture's moments."""
    w, mu, cov = np.array([0.3, 0.7]), np.array([[-1.0], [2.5]]), np.array([[[0.5]], [[2.0]]])
    y = np.array([[0.4], [1.1], [-0.2]])
    wp, mp, cp, le = gp.gmm_posterior(w, mu, cov, y, H=np.array([[1.5]]), R=np.array([[0.8]]))
    t = np.linspace(-12, 12, 200_001)
    prior = sum(w[k] * stats.norm(mu[k, 0], math.sqrt(cov[k, 0, 0])).pdf(t) for k in range(2))
    lik = np.prod([stats.norm(1.5 * t, math.sqrt(0.8)).pdf(yi) for yi in y[:, 0]], axis=0)
    joint = prior * lik
    z = np.trapezoid(joint, t)
    assert abs(float(le) - math.log(z)) < 1e-8
    mean = np.trapezoid(t * joint, t) / z
    var = np.trapezoid(t**2 * joint, t) / z - mean**2
    assert abs(float(wp @ mp[:, 0]) - mean) < 1e-8
    assert abs(float(wp @ (cp[:, 0, 0] + mp[:, 0] ** 2)) - float(wp @ mp[:, 0]) ** 2 - var) < 1e-8


def test_batched_calls_equal_single_calls():
    rng = np.random.default_rng(2)
    gmms = [_random_gmm(rng, 2, 2) for _ in range(3)]
    W, M, C = (np.stack(a) for a in zip(*gmms))
    Y = rng.normal(size=(3, 5, 2))
    H, R = np.eye(2), 0.5 * np.eye(2)
    out = gp.gmm_posterior(W, M, C, Y, H=H, R=R)
    for b in range(3):
        single = gp.gmm_posterior(W[b], M[b], C[b], Y[b], H=H, R=R)
        for a, s in zip(out, single):
            np.testing.assert_allclose(a[b], s, atol=1e-13)
    x = rng.normal(size=(3, 7, 2))
    lp = gp.gmm_logpdf(W, M, C, x)
    want = [[np.log(sum(W[b, k] * stats.multivariate_normal(M[b, k], C[b, k]).pdf(x[b, s]) for k in range(2)))
             for s in range(7)] for b in range(3)]
    np.testing.assert_allclose(lp, want, atol=1e-10)
    _, _, _, le0 = gp.gmm_posterior(W, M, C, np.zeros((3, 0, 2)), H=H, R=R)
    np.testing.assert_array_equal(le0, 0.0)  # no data: evidence 1


def test_filter_bank_against_brute_force_joint_gaussian():
    """θ_0 ~ GMM, θ_t = Fθ_{t−1} + w_t: per component all (θ_T, y_{1:T}) are jointly Gaussian with
    Cov(θ_t, θ_s) = F^t Σ_k F^sᵀ + Σ_{r≤min(t,s)} F^{t−r} Q F^{s−r}ᵀ; condition θ_T on y_{1:T}."""
    rng = np.random.default_rng(3)
    K, d, m, n, T = 2, 2, 1, 2, 5
    w, mu, cov = _random_gmm(rng, K, d)
    F = np.array([[0.9, 0.2], [-0.1, 0.8]])
    Q = np.array([[0.3, 0.1], [0.1, 0.2]])
    H, R = np.array([[1.0, -0.5]]), np.array([[0.4]])
    ys = rng.normal(size=(T, n, m))
    res = gp.gmm_filter(w, mu, cov, ys, F=F, Q=Q, H=H, R=R)
    Fp = [np.linalg.matrix_power(F, t) for t in range(T + 1)]

    def cov_x(t, s, S0):
        c = Fp[t] @ S0 @ Fp[s].T
        return c + sum(Fp[t - r] @ Q @ Fp[s - r].T for r in range(1, min(t, s) + 1))

    logs, post_means, post_covs = [], [], []
    idx = [(t, i) for t in range(1, T + 1) for i in range(n)]
    for k in range(K):
        mean_y = np.concatenate([H @ Fp[t] @ mu[k] for t, _ in idx])
        Cyy = np.block([[H @ cov_x(t, s, cov[k]) @ H.T + (R if (t, i) == (s, j) else 0) for s, j in idx]
                        for t, i in idx])
        Cxy = np.hstack([cov_x(T, s, cov[k]) @ H.T for s, _ in idx])
        logs.append(np.log(w[k]) + stats.multivariate_normal(mean_y, Cyy).logpdf(ys.reshape(-1)))
        gain = Cxy @ np.linalg.inv(Cyy)
        post_means.append(Fp[T] @ mu[k] + gain @ (ys.reshape(-1) - mean_y))
        post_covs.append(cov_x(T, T, cov[k]) - gain @ Cxy.T)
    lse = np.logaddexp.reduce(logs)
    assert abs(float(np.sum(res.log_pred_T)) - lse) < 1e-9
    np.testing.assert_allclose(res.weights_TxK[-1], np.exp(np.array(logs) - lse), atol=1e-10)
    np.testing.assert_allclose(res.means_TxKxd[-1], post_means, atol=1e-9)
    np.testing.assert_allclose(res.covs_TxKxdxd[-1], post_covs, atol=1e-9)
    w1, m1, c1 = gp.gmm_predict(w, mu, cov, F=F, Q=Q)
    np.testing.assert_allclose(m1, mu @ F.T, atol=1e-14)
    np.testing.assert_allclose(c1, F @ cov @ F.T + Q, atol=1e-13)


def test_kl_mc():
    """K = 1: KL(N(a, s²)‖N(b, t²)) = log(t/s) + (s² + (a − b)²)/(2t²) − ½; MC within 4 SE. KL(q‖q) = 0 exactly."""
    q = (np.array([1.0]), np.array([[0.3]]), np.array([[[0.5]]]))
    p = (np.array([1.0]), np.array([[-0.4]]), np.array([[[2.0]]]))
    kl, se = gp.kl_mc(jax.random.key(0), q, p, n_samples=20_000)
    want = math.log(math.sqrt(2.0 / 0.5)) + (0.5 + 0.7**2) / 4.0 - 0.5
    assert abs(float(kl) - want) < 4 * float(se) and float(se) < 0.01
    g = _random_gmm(np.random.default_rng(4), 3, 2)
    batch = tuple(np.stack([a, a]) for a in g)
    kl0, se0 = gp.kl_mc(jax.random.key(1), batch, batch, n_samples=100)
    np.testing.assert_array_equal(kl0, 0.0)
    np.testing.assert_array_equal(se0, 0.0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(weights=np.array([1.2, -0.2])), "weights"),
    (dict(weights=np.array([0.5, 0.6])), "weights"),
    (dict(weights=np.zeros(0), means=np.zeros((0, 1)), covs=np.zeros((0, 1, 1))), "weights"),
    (dict(covs=np.array([[[1.0]], [[-1.0]]])), "covs"),
    (dict(means=np.zeros((2, 2)), covs=np.stack([np.array([[1.0, 0.5], [0.0, 1.0]])] * 2)), "covs"),
    (dict(means=np.zeros((3, 1))), "means"),
    (dict(H=np.ones((1, 2))), "H"),
    (dict(R=np.eye(2)), "R"),
    (dict(R=np.array([[0.0]])), "R"),
    (dict(y=np.ones((2, 3))), "y"),
])
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(weights=np.array([0.5, 0.5]), means=np.zeros((2, 1)), covs=np.ones((2, 1, 1)), y=np.ones((2, 1)),
                H=np.eye(1), R=np.eye(1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}: allowed"):
        gp.gmm_posterior(args["weights"], args["means"], args["covs"], args["y"], H=args["H"], R=args["R"])
