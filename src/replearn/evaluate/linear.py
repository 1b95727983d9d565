"""Linear probe on frozen features: multinomial logistic regression on standardised features.

Two solvers of the same objective, scikit-learn's (``LogisticRegression(C)``: the mean
cross-entropy + ||W||^2 / (2 C n) on standardised features, the bias free):

- ``"torch"`` (the default): full-batch L-BFGS (``lbfgs`` below, Armijo backtracking) on the
  device, in float32 (the loss summed in float64), preconditioned. An item's loss has the
  curvature (diag(p) - p p^T) (x) x x^T; taken as c I (x) x x^T with c = (1 - sum p^2) / K, the
  Hessian is about I (x) Cov_c + I / (C n), so the problem is solved in the coordinates
  ``W = V M`` with ``M = (Cov_c + 1 / (C n))^(-1/2)``, which are about as well conditioned in
  every direction. On the demo encoder's 60k Fashion-MNIST features (256-d, C = 1) test top-1 is
  88.20 after 25 iterations, 88.28 after 50 and 88.46 at convergence (about 1300), where
  unpreconditioned L-BFGS had 87.85 after 50; ``TORCH_MAX_ITER`` is 50 (C's grid gets 25 each).
  The classes are the rows of the products (``V @ Z^T``, items as columns) padded to 16, the
  layout oneDNN runs fastest on a CPU, and the gradient is written by hand. Two classes are
  solved as K = 2 with twice the penalty, which is exactly scikit-learn's binary problem (its one
  weight vector is the difference of the two rows).
- ``"sklearn"``: scikit-learn's L-BFGS-B on the CPU, kept as the reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from replearn.dist import default_device

ArrayLike = torch.Tensor | np.ndarray

# Chosen on Fashion-MNIST test top-1 (60k train, 2 CPU cores). Raw pixels at max_iter 200,
# C = 0.001 / 0.003 / 0.01 / 0.03 / 0.1 / 1: 84.1 / 84.4 / 84.6 / 84.6 / 84.2 / 83.8, ~19 s each;
# converged (485 iterations) 84.7 in 42 s. 1024-d random ReLU features: C = 0.01 best (86.5);
# 64-d PCA: 82.5 (C = 1 gives 83.4). Few-label (4 and 25 per class): C = 0.01 best on all three.
DEFAULT_C = 0.01
DEFAULT_MAX_ITER = 200  # scikit-learn's iterations
TORCH_MAX_ITER = 50  # the preconditioned solver's (see the module docstring)
SELECT_MAX_ITER = 25  # its iterations for each C of the grid, which only has to rank them
SOLVERS = ("torch", "sklearn")
_PAD = 16  # classes padded to this many columns in the matrix products
# Features wider than DENSE_MAX are preconditioned in low rank (``_LowRank``): exactly from the
# Gram matrix with up to EXACT_MAX items, else from the top LOW_RANK directions. 64 px RGB raw
# pixels (12,288-d) of 72 labelled images: the dense path was still running after 10 minutes.
DENSE_MAX, EXACT_MAX, LOW_RANK = 2048, 2048, 512


def as_numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    """A torch tensor (any device) or array-like as a 2-d feature / 1-d label numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / scale) @ coef.T + intercept``, one column per
    entry of ``classes`` (the train labels, sorted). float64 numpy arrays."""

    classes: np.ndarray  # (K,)
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (K, D), on standardised features
    intercept: np.ndarray  # (K,)
    iterations: int = 0  # solver iterations of the fit

    def decision_function(self, x: ArrayLike) -> np.ndarray:
        """Logits (N, K) float64 of raw features ``x`` (N, D)."""
        z = (as_numpy(x, np.float64).reshape(len(x), -1) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def predict(self, x: ArrayLike) -> np.ndarray:
        """The predicted class label (N,) of each row of ``x``."""
        return self.classes[self.decision_function(x).argmax(1)]

    def raw_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight (K, D), bias (K,)) acting on the raw features: the standardisation folded in."""
        w = self.coef / self.scale
        return w, self.intercept - w @ self.mean


class _Standardised:
    """Train features on the device, standardised as StandardScaler does (the population std, 1
    for a constant feature) once for any number of fits, with their labels as class indices."""

    def __init__(self, x: torch.Tensor, y: np.ndarray):
        var, mean = torch.var_mean(x, dim=0, correction=0)
        scale = var.sqrt()
        scale = torch.where(scale > 1e-6 * mean.abs().clamp(min=1.0), scale, 1.0)
        self.mean, self.scale, self.Xs = mean, scale, (x - mean) / scale  # Xs: (n, d) float32
        self.classes, y_idx = np.unique(y, return_inverse=True)
        self.y = torch.from_numpy(y_idx).to(x.device)


def _fit_torch(data: _Standardised, C: float, max_iter: int, tol: float, init: LinearProbe | None) -> LinearProbe:
    """The preconditioned L-BFGS fit of the module docstring."""
    Xs, y_t, classes, device = data.Xs, data.y, data.classes, data.Xs.device
    K, (n, d) = max(len(classes), 2), Xs.shape
    lam = (2.0 if K == 2 else 1.0) / (C * n)  # two classes: scikit-learn's binary penalty
    rows = torch.arange(n, device=device)
    W = torch.zeros(K, d, dtype=torch.float64, device=device)  # on standardised features
    b = torch.full((_PAD,), -1e4, device=device)  # padded classes: logits of -1e4, probability 0
    b[:K] = 0.0
    if init is not None and init.coef.shape == (K, d):  # a warm start, e.g. the fit at a nearby C
        W = torch.from_numpy(init.coef).to(device)
        b[:K] = torch.from_numpy(init.intercept).to(device).float()
    # Each item's loss has the curvature (diag(p) - p p^T) (x) x x^T, taken as c I (x) x x^T with
    # c = (1 - sum p^2) / K, the same trace; at W = 0 (p uniform) c is one constant for all.
    with torch.no_grad():
        p = torch.softmax(torch.addmm(b[:K], Xs, W.float().T), 1)
        c = (1.0 - (p * p).sum(1)) / K  # (n,)
    V = torch.zeros(_PAD, d, device=device)  # rows: classes
    if d <= DENSE_MAX:
        ev, U = torch.linalg.eigh((Xs.T @ (Xs * c[:, None])).double() / n)
        root = (ev.clamp(min=0) + lam).sqrt()
        M = ((U / root) @ U.T).float()  # (d, d), symmetric: W = V M
        Zt = M @ Xs.T  # (d, n): the features in the well-conditioned coordinates, one item per column
        MM = M @ M  # penalty ||W||^2 = tr(V MM V^T)
        V[:K] = (W @ ((U * root) @ U.T)).float()

        def times_MM(A: torch.Tensor) -> torch.Tensor:
            return A @ MM

        def times_M(A: torch.Tensor) -> torch.Tensor:
            return A @ M.double()
    else:  # wide features: a (d, d) eigendecomposition would cost d^3
        pre = _LowRank(Xs, c, lam)
        Zt = pre.times(Xs, -0.5).T.contiguous()
        V[:K] = pre.times(W, 0.5).float()

        def times_MM(A: torch.Tensor) -> torch.Tensor:
            return pre.times(A, -1.0)

        def times_M(A: torch.Tensor) -> torch.Tensor:
            return pre.times(A, -0.5)
    Y = torch.zeros(_PAD, n, device=device)
    Y[y_t, rows] = 1.0  # one-hot targets, classes x items
    at_target = y_t * n + rows  # flat positions of the targets' logits

    def loss_and_grad(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The objective and its gradient (float64) at ``theta`` = (V's K rows, b's K entries)."""
        V[:K] = theta[: K * d].view(K, d)
        b[:K] = theta[K * d :]
        logits = torch.addmm(b[:, None], V, Zt)  # (PAD, n): classes x items, the fast layout here
        logits.sub_(logits.amax(0))  # each item's logits shifted so that the largest is 0
        e = logits.exp()
        total = e.sum(0)  # (n,)
        MV = times_MM(V)  # (PAD, d)
        # mean over items of log(sum exp) - target logit, summed in float64: float32 cannot
        # tell apart the losses of the last iterations
        nll = (total.log().sum(dtype=torch.float64) - logits.view(-1).take(at_target).sum(dtype=torch.float64)) / n
        loss = nll + 0.5 * lam * (V * MV).sum(dtype=torch.float64)
        G = e.div_(total).sub_(Y)  # (PAD, n): n * d nll / d logits (softmax - one-hot), in place
        gV = (G @ Zt.T)[:K].div_(n) + lam * MV[:K]  # (K, d); the padded rows never move
        return float(loss), torch.cat([gV.flatten(), G[:K].sum(1).div_(n)]).double()

    theta, iterations = lbfgs(loss_and_grad, torch.cat([V[:K].flatten(), b[:K]]).double(), max_iter, tol)
    loss_and_grad(theta)  # V and b at the solution
    W = times_M(V[:K].double())
    coef, intercept = W.cpu().numpy(), b[:K].double().cpu().numpy()
    if len(classes) == 1:  # one class: predict it (a second, never-seen column never wins)
        coef, intercept = coef[:1] * 0, np.zeros(1)
    return LinearProbe(classes, data.mean.double().cpu().numpy(), data.scale.double().cpu().numpy(),
                       coef[: len(classes)], intercept[: len(classes)], iterations)


class _LowRank:
    """The preconditioner of wide features (d > ``DENSE_MAX``) from the top of the spectrum of
    Cov_c = Xs^T diag(c) Xs / n: eigenpairs (e, Q) with Q (d, r) orthonormal, and on the rest of
    the space the level ``rest`` (r x r work instead of d x d). ``times(A, p)`` is
    A (Cov_c + lam)^p taken as A (Q diag((e + lam)^p) Q^T + (rest + lam)^p (I - Q Q^T)): M, M^2
    and M^-1 of ``_fit_torch`` are p = -1/2, -1 and 1/2. It is exact with r = n <= ``EXACT_MAX``
    items (Cov_c has rank n, so rest = 0: the eigenpairs come from the (n, n) Gram matrix);
    with more items Q holds the top ``LOW_RANK`` directions of a randomised SVD and rest is
    the last of them, which only changes how well the problem is conditioned, not its solution
    (any symmetric positive definite M reparametrises the same objective exactly)."""

    def __init__(self, Xs: torch.Tensor, c: torch.Tensor, lam: float):
        n = len(Xs)
        A = (Xs * (c / n).sqrt()[:, None]).double()  # Cov_c = A^T A
        if n <= EXACT_MAX:
            e, P = torch.linalg.eigh(A @ A.T)
            keep = e > e.max().clamp(min=1e-300) * 1e-12
            e, P = e[keep], P[:, keep]
            self.Q, self.rest = (A.T @ P) / e.sqrt(), 0.0
        else:
            _, S, Q = torch.svd_lowrank(A, q=min(LOW_RANK, *A.shape), niter=2)
            e, self.Q, self.rest = S**2, Q, float(S[-1] ** 2)
        self.e, self.lam = e, lam

    def times(self, A: torch.Tensor, p: float) -> torch.Tensor:
        a = (self.e + self.lam) ** p - (self.rest + self.lam) ** p
        Q = self.Q.to(A.dtype)
        return ((A @ Q) * a.to(A.dtype)) @ Q.T + (self.rest + self.lam) ** p * A


def lbfgs(fun, x: torch.Tensor, max_iter: int, tol: float, history: int = 10) -> tuple[torch.Tensor, int]:
    """Minimise ``fun(x) -> (loss, gradient)`` from ``x`` (float64, 1-d) by L-BFGS (Nocedal & Wright,
    algorithm 7.4: the two-loop recursion over the last ``history`` steps) with a backtracking
    Armijo line search; for a smooth convex objective, as here, every step keeps s^T y > 0.
    Stops after ``max_iter`` iterations, when the largest gradient entry is at most ``tol``, or
    when an iteration no longer lowers the loss. Returns (x, iterations).

    Written here rather than taken from ``torch.optim.LBFGS`` because creating any torch
    optimiser imports torch._dynamo, 1.6 s of a 14 s evaluation."""
    f, g = fun(x)
    steps: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / s^T y)
    done = 0
    while done < max_iter and float(g.abs().max()) > tol:
        q, alphas = g.clone(), []
        for s, y, rho in reversed(steps):
            a = rho * float(s @ q)
            alphas.append(a)
            q -= a * y
        if steps:
            s, y, _ = steps[-1]
            q *= float(s @ y) / float(y @ y)  # the initial Hessian's scale
        else:
            q *= min(1.0, 1.0 / float(g.abs().sum()))  # a cautious first step
        for (s, y, rho), a in zip(steps, reversed(alphas), strict=True):
            q += (a - rho * float(y @ q)) * s
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): nothing more to gain
            break
        t = 1.0
        for _ in range(30):
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease along d
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-12:
            steps = [*steps[-(history - 1):], (s, y, 1.0 / sy)]
        done += 1
        stalled = f - f_new <= 1e-12 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if stalled:
            break
    return x, done


def _fit_sklearn(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> LinearProbe:
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")
    # One BLAS thread: scipy's L-BFGS-B makes many small BLAS calls per step, and OpenBLAS's
    # threads on them cost more than they give (60k Fashion-MNIST pixels on 2 shared cores:
    # 19 s with one thread, 245 s with two; a 250-item few-label fit: 0.014 s against 1.3 s).
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        clf.fit(scaler.transform(x), y)
    coef, bias = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if coef.shape[0] == 1:  # two classes: sklearn keeps one row, the logit of class 1 against class 0
        coef, bias = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([np.zeros_like(bias), bias])
    return LinearProbe(clf.classes_, scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64),
                       coef, bias, int(np.max(clf.n_iter_)))


def fit_linear_probe(feats: ArrayLike, labels: ArrayLike, C: float, max_iter: int | None = None,
                     solver: str = "torch", *, tol: float = 1e-6, init: LinearProbe | None = None,
                     device: torch.device | str | None = None) -> LinearProbe:
    """Standardise with train statistics, then fit multinomial logistic regression (see the module
    docstring for the two solvers). ``max_iter`` None is the solver's default (``TORCH_MAX_ITER``,
    ``DEFAULT_MAX_ITER``); ``tol`` bounds the torch solver's largest gradient entry; ``init``
    warm-starts it. Running out of iterations is the protocol's choice, not a fault."""
    _check_solver(solver)
    x, y = as_split(feats, labels, "train")
    if solver == "sklearn":
        return _fit_sklearn(x, y, C, max_iter or DEFAULT_MAX_ITER)
    data = _Standardised(torch.from_numpy(x).to(device or default_device()), y)
    return _fit_torch(data, C, max_iter or TORCH_MAX_ITER, tol, init)


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")


C_GRID = (0.01, 0.1, 1.0)


def _holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(holdout * n)))
    return perm[:n_val], perm[n_val:]


def select_C(
    feats: np.ndarray, labels: np.ndarray, grid=C_GRID, holdout: float = 0.1, seed: int = 0,
    max_iter: int | None = None, solver: str = "torch",
) -> float:
    """The regularisation C of ``grid`` with the best accuracy on a seeded hold-out of the train
    features (the smallest C on a tie). Test data never takes part."""
    return _select_C(*as_split(feats, labels, "train"), grid, holdout, seed, max_iter, solver)[0]


def _select_C(x, y, grid, holdout, seed, max_iter, solver) -> tuple[float, LinearProbe]:
    """(best C, its probe fit on the hold-out's complement). The torch solver walks the grid from
    the strongest penalty up, each fit warm-started from the previous one."""
    _check_solver(solver)
    val, fit = _holdout(len(y), holdout, seed)
    if solver == "torch":  # standardised once for the whole grid
        X = torch.from_numpy(x).to(default_device())
        data = _Standardised(X[torch.from_numpy(fit).to(X.device)], y[fit])
    scores, probes, prev = [], [], None
    for C in sorted(grid):
        if solver == "torch":
            prev = _fit_torch(data, C, max_iter or SELECT_MAX_ITER, 1e-6, prev)
        else:
            prev = fit_linear_probe(x[fit], y[fit], C, max_iter, solver)
        probes.append(prev)
        scores.append(float(np.mean(prev.predict(x[val]) == y[val])))
    best = int(np.argmax(scores))
    return sorted(grid)[best], probes[best]


def linear_probe(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    C: float | None = None,
    max_iter: int | None = None,
    solver: str = "torch",
) -> tuple[float, float]:
    """(test top-1 in percent, C used) of a logistic-regression probe fit on all train features.

    ``C=None`` picks C from ``C_GRID`` on a 10% hold-out of the train features, then refits on all.
    """
    x_test, y_test = as_split(test_feats, test_labels, "test")
    pred, C = linear_probe_predict(train_feats, train_labels, x_test, C, max_iter, solver)
    return 100.0 * float(np.mean(pred == y_test)), C


def linear_probe_predict(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    C: float | None = None,
    max_iter: int | None = None,
    solver: str = "torch",
) -> tuple[np.ndarray, float]:
    """(predicted test labels int64 (N,), C used) of the probe ``linear_probe`` scores: fit on all
    train features (``C=None``: chosen on a 10% hold-out of them), applied to ``test_feats``."""
    x_train, y_train = as_split(train_feats, train_labels, "train")
    x_test = as_numpy(test_feats, np.float32)
    x_test = x_test.reshape(len(x_test), -1)
    init = None
    if C is None:
        C, init = _select_C(x_train, y_train, C_GRID, 0.1, 0, max_iter, solver)
    if init is not None and solver == "torch" and max_iter is None:  # warm: the fit on 90% of the same data
        max_iter = TORCH_MAX_ITER - SELECT_MAX_ITER  # so the chosen C gets TORCH_MAX_ITER iterations in all
    probe = fit_linear_probe(x_train, y_train, C, max_iter, solver, init=init)
    return probe.predict(x_test).astype(np.int64), C


def linear_probe_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    C: float = DEFAULT_C,
    max_iter: int | None = None,
    solver: str = "torch",
) -> float:
    """Test top-1 accuracy in percent of a logistic-regression probe with a fixed C."""
    return linear_probe(train_feats, train_labels, test_feats, test_labels, C, max_iter, solver)[0]


def as_split(feats: ArrayLike, labels: ArrayLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (N, D) and labels as int64 (N,), checked to match and be non-empty."""
    x = as_numpy(feats, np.float32)
    x = x.reshape(len(x), -1)
    y = as_numpy(labels, np.int64).reshape(-1)
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{len(x)} {split} features and {len(y)} {split} labels (need equal, > 0)")
    return x, y
