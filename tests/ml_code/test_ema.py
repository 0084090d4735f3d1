"""The training job's exponential moving average keeps the average its docstring states for
every tensor of the model: weights, batch-norm statistics and the integer batch counter."""

from __future__ import annotations

import torch
from torch import nn

from ml_code.training.loop import EMA


def test_the_ema_is_the_stated_average_of_every_floating_tensor_and_copies_the_rest() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 7))
    ema = EMA(model, decay=0.9)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for n in range(1, 25):  # real steps: the weights move and the batch-norm statistics and counter update
        loss = model(torch.randn(5, 3, 8, 8)).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            expected[k] = expected[k] * d + v.detach() * (1 - d) if v.dtype.is_floating_point else v.clone()
    assert ema.updates == 24
    state = model.state_dict()
    assert set(ema.shadow) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(ema.shadow[k], expected[k], msg=k)
        assert ema.shadow[k].data_ptr() != v.data_ptr(), f"{k}: the average must not alias the model"
    assert int(ema.shadow["1.num_batches_tracked"]) == 24
    assert not torch.equal(ema.shadow["4.weight"], state["4.weight"])  # an average, not the last weights
