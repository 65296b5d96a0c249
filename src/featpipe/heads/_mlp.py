"""Small MLP head (torch, CPU): D -> 256 -> 128 -> dropout -> C, early-stopped on the run's metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featpipe.heads._base import DEFAULT_REFIT, BaseHead


class MLPWeights:
    """Trained MLP as numpy arrays: pickles without torch state and predicts with numpy."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], best_epoch: int):
        self.layers = layers
        self.best_epoch = best_epoch

    def forward(self, X: np.ndarray) -> np.ndarray:
        h = X
        for i, (W, b) in enumerate(self.layers):
            h = h @ W.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        h = h - h.max(1, keepdims=True)
        e = np.exp(h)
        return e / e.sum(1, keepdims=True)


def mlp_network(n_in: int, hidden: Sequence[int], dropout: float, n_out: int) -> Any:
    """Linear+ReLU per hidden layer, dropout, linear output (the torch module both MLP heads train)."""
    from torch import nn

    dims = [n_in, *hidden]
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods, nn.Dropout(dropout), nn.Linear(dims[-1], n_out))


def mlp_optimizer(net: Any, lr: float, weight_decay: float) -> Any:
    """Adam over the network's parameters (both MLP heads); fused: one kernel per step for all of them,
    ~15% of a small MLP fit on CPU."""
    import torch

    return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


class EarlyStopping:
    """The one stopping rule of both MLP heads: after each epoch, the run's metric on validation decides
    (NaN counts as worst), a validation loss lower by more than 1e-6 breaks a tie; training stops after
    ``patience`` epochs without improvement and the best epoch's weights are kept."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: tuple[float, float] = (-np.inf, -np.inf)
        self.best_epoch = 0
        self.bad = 0
        self._state: dict[str, Any] | None = None

    def update(self, epoch: int, net: Any, score: float, val_loss: float) -> bool:
        """Record an epoch's validation results; True when training should stop."""
        key = (-np.inf if score != score else round(float(score), 12), -float(val_loss))
        if key[0] > self.best[0] or (key[0] == self.best[0] and key[1] > self.best[1] + 1e-6):
            self.best, self.best_epoch, self.bad = key, epoch, 0
            self._state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, net: Any) -> None:
        """Load the best epoch's weights into ``net``."""
        if self._state is not None:
            net.load_state_dict(self._state)


def validation_pass(net: Any, X: Any, y: Any, loss_fn: Any) -> tuple[np.ndarray, float]:
    """(softmax probabilities as float64, mean loss) of ``net`` in eval mode on validation tensors."""
    import torch

    net.eval()
    with torch.no_grad():
        logits = net(X)
        loss = float(loss_fn(logits, y).mean())
        return torch.softmax(logits, 1).numpy().astype(np.float64), loss


def mlp_weights(net: Any, best_epoch: int) -> MLPWeights:
    """The trained network's linear layers as float64 numpy arrays."""
    from torch import nn

    layers = [(m.weight.detach().numpy().astype(np.float64).copy(), m.bias.detach().numpy().astype(np.float64).copy())
              for m in net if isinstance(m, nn.Linear)]
    return MLPWeights(layers, best_epoch)


class MLPHead(BaseHead):
    """Two hidden layers with ReLU and dropout, Adam, cross-entropy; seeded and deterministic on CPU.

    ``weight_decay_grid`` is searched on validation; each fit stops when the validation score of the
    run's ``metric`` (ties: validation loss) has not improved for ``patience`` epochs and keeps the best
    epoch's weights. The train+val refit trains for
    that best epoch count. ``batch_size`` defaults to ``n_train // 10`` clipped to 16..128 (at least ten
    steps per epoch on small sets). Uses torch's current thread setting (``torch.set_num_threads``).
    """

    name = "mlp"

    def __init__(self, task: str = "multiclass", hidden: Sequence[int] = (256, 128), dropout: float = 0.2,
                 weight_decay_grid: Sequence[float] = (1e-4, 1e-2), lr: float = 1e-3, batch_size: int | None = None,
                 max_epochs: int = 200, patience: int = 10, preprocess: str = "standardize",
                 class_weight: str | None = None, refit: str = DEFAULT_REFIT, metric: str | None = None,
                 cv: int | None = None, oof_folds: int = 5, seed: int = 0):
        self.task = task
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay_grid = weight_decay_grid
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.preprocess = preprocess
        self.class_weight = class_weight
        self.refit = refit
        self.metric = metric
        self.cv = cv
        self.oof_folds = oof_folds
        self.seed = seed

    def _grid(self) -> list[dict[str, Any]]:
        return [{"weight_decay": float(w)} for w in self.weight_decay_grid]

    def _record_params(self, params, model):
        return {**params, "epochs": model.best_epoch}

    def _refit_params(self, params, model):
        return {**params, "epochs": model.best_epoch}

    def _fit_one(self, params, X, y, sw, n_classes, X_val, y_val, warm=None):
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        net = mlp_network(X.shape[1], self.hidden, self.dropout, n_classes)
        opt = mlp_optimizer(net, self.lr, params["weight_decay"])
        Xt = torch.as_tensor(X, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.long)
        wt = torch.as_tensor(sw if sw is not None else np.ones(len(y)), dtype=torch.float32)
        loss_fn = nn.CrossEntropyLoss(reduction="none")
        fixed_epochs = params.get("epochs")
        early = X_val is not None and fixed_epochs is None
        if early:
            Xv = torch.as_tensor(X_val, dtype=torch.float32)
            yv = torch.as_tensor(y_val, dtype=torch.long)
        n_epochs = int(fixed_epochs) if fixed_epochs is not None else self.max_epochs
        stopper = EarlyStopping(self.patience)
        bs = self.batch_size or int(min(128, max(16, len(y) // 10)))
        for epoch in range(1, n_epochs + 1):
            net.train()
            order = torch.as_tensor(rng.permutation(len(y)))
            for i in range(0, len(y), bs):
                idx = order[i:i + bs]
                opt.zero_grad()
                loss = (loss_fn(net(Xt[idx]), yt[idx]) * wt[idx]).sum() / wt[idx].sum()
                loss.backward()
                opt.step()
            if not early:
                continue
            proba, vloss = validation_pass(net, Xv, yv, loss_fn)
            if stopper.update(epoch, net, self._score_fn(y_val, proba), vloss):
                break
        if not early:
            return mlp_weights(net, n_epochs)
        stopper.restore(net)
        return mlp_weights(net, stopper.best_epoch)

    def _proba_one(self, model, X):
        return model.forward(X)
