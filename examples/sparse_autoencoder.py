"""The sparse autoencoder of the UFLDL tutorial: 64-25-64 sigmoid, m = 10,000 8x8 patches,
cost = (1/2m) sum ||x_hat - x||^2 + (lambda/2) sum W^2 + beta sum_j KL(rho || rho_hat_j).

The engine's vectorized gradient is compared with the per-sample loop formula of the tutorial.

    python examples/sparse_autoencoder.py
"""

import numpy as np

import backprop as bp

RHO, BETA, LAMBDA = 0.01, 3.0, 1e-4


def cost(model, x):
    """The sparse-autoencoder cost, built from backprop's ops and losses."""
    encoder, decoder = model.layers[0], model.layers[2]
    hidden = bp.sigmoid(encoder(x))
    output = bp.sigmoid(decoder(hidden))
    penalty = bp.losses.l2_penalty(model.parameters(), LAMBDA)
    return bp.losses.quadratic_loss(output, x) + penalty + BETA * bp.losses.kl_sparsity(hidden, RHO)


def loop_gradient(w1, b1, w2, b2, data):
    """The tutorial's formula, one sample at a time (weights are in x out: rows are samples)."""
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    m = len(data)
    rho_hat = sigmoid(data @ w1 + b1).mean(axis=0)  # the sparsity term needs a first pass
    sparsity = BETA * (-RHO / rho_hat + (1 - RHO) / (1 - rho_hat))
    gw1, gb1, gw2, gb2 = np.zeros_like(w1), np.zeros_like(b1), np.zeros_like(w2), np.zeros_like(b2)
    for x in data:
        a2 = sigmoid(x @ w1 + b1)
        a3 = sigmoid(a2 @ w2 + b2)
        delta3 = -(x - a3) * a3 * (1 - a3)
        delta2 = (w2 @ delta3 + sparsity) * a2 * (1 - a2)
        gw2 += np.outer(a2, delta3)
        gb2 += delta3
        gw1 += np.outer(x, delta2)
        gb1 += delta2
    return [gw1 / m + LAMBDA * w1, gb1 / m, gw2 / m + LAMBDA * w2, gb2 / m]


def main(m: int = 10_000, seed: int = 0) -> dict:
    bp.manual_seed(seed)
    data = bp.data.patches(m, seed)
    with bp.use_backend("numpy"):
        model = bp.nn.Sequential(bp.nn.Linear(64, 25, dtype="float64"), bp.nn.Sigmoid(),
                                 bp.nn.Linear(25, 64, dtype="float64"), bp.nn.Sigmoid())  # fmt: skip
        for p in model.parameters():  # small random biases, so no gradient is trivially zero
            p.data = p.data + 0.01 * np.random.default_rng(seed).standard_normal(p.shape)
        engine = [bp.to_numpy(g) for g in bp.grad(cost(model, bp.tensor(data)), model.parameters())]
    loop = loop_gradient(*(p.numpy() for p in model.parameters()), data)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(engine, loop, strict=True))
    print(f"sparse autoencoder 64-25-64, m={m}: vectorized vs per-sample loop, max difference {difference:.1e}")
    return {"max_difference": difference}


if __name__ == "__main__":
    main()
