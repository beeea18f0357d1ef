"""zfb_shifts' Monte Carlo program: nested prompts and the batched zero-padded OLS equal the direct per-M computation."""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import zfb_shifts
from ictl import lsa_training as lt
from ictl.tasks.linear import sample_linear_prompts


def test_nested_prompt_errors_equal_per_length_computation():
    d, chunk, Ms = 5, 64, (3, 2, 7)   # unsorted, two lengths below d (batched pinv), one above
    model, params = lt.init_params(jax.random.key(0), d=d, sigma=0.1)
    eye = jnp.eye(d, dtype=jnp.float32)
    key = jax.random.key(3)
    err_m, err_o = zfb_shifts._sq_errors(params, key, eye, 2 * eye, eye, model=model, Ms=Ms, d=d, chunk=chunk,
                                         random_cov=None)
    p = sample_linear_prompts(key, batch=chunk, n_ctx=max(Ms), d=d, cov=eye, query_cov=2 * eye, w_cov=eye)
    x, y, xq, yq = (np.asarray(a, np.float64) for a in (p.x_ctx, p.y_ctx, p.x_q[:, 0], p.y_q[:, 0]))
    for i, m in enumerate(Ms):
        y_model = np.asarray(model.apply(params, p.x_ctx[:, :m], p.y_ctx[:, :m], p.x_q))[:, 0]
        np.testing.assert_allclose(err_m[i], (y_model - yq) ** 2, rtol=1e-4, atol=1e-6)
        if m < d:  # min-norm least squares on the first m points, float64 numpy
            w = np.einsum("bdn,bn->bd", np.linalg.pinv(x[:, :m]), y[:, :m])
            expected = (np.einsum("bd,bd->b", w, xq) - yq) ** 2
            np.testing.assert_allclose(err_o[i], expected, rtol=2e-3, atol=1e-4)
            assert expected.mean() > 0.5   # a real error at m < d (the query's w off the row space)
        else:
            assert np.all(np.asarray(err_o[i]) == 0)
