"""ELMo's LSTM: cells with a projection, optional cell/projection clipping, residual stacks.

`ProjectedLstm` keeps its weights in an `nn.LSTM(proj_size=...)` and runs that fast path (cuDNN
on CUDA) when no clipping is asked for. With `cell_clip` or `proj_clip` set it runs the exact
clipped cell of bilm-tf (`clipped_cell.clipped_lstm`, with a hand-written backward pass and, on
CUDA, Triton kernels for each step's gate arithmetic; `kernel` picks) on the *same* parameters,
so the two paths are interchangeable and can be checked against each other; `reference_forward`
is the same clipped cell step by step in autograd ops, its reference.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from elmo_dist.model.clipped_cell import clipped_lstm

# the CPU falls back from oneDNN to PyTorch's own kernel for projected LSTMs; that is expected
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")

State = tuple[torch.Tensor, torch.Tensor]  # (h [1, B, proj], c [1, B, cells])


class ProjectedLstm(nn.Module):
    def __init__(self, input_dim: int, cells: int, proj: int, cell_clip: float | None, proj_clip: float | None,
                 kernel: str = "auto"):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, cells, batch_first=True, proj_size=proj)
        self.cell_clip, self.proj_clip, self.kernel = cell_clip, proj_clip, kernel

    @property
    def clipped(self) -> bool:
        return self.cell_clip is not None or self.proj_clip is not None

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x [B, T, input_dim] -> outputs [B, T, proj] and the final (h [1, B, proj], c [1, B, cells])."""
        if not self.clipped:
            return self.lstm(x, state)
        lstm = self.lstm
        gates_x, h, c = self._start(x, state)
        out, h, c = clipped_lstm(gates_x, h, c, lstm.weight_hh_l0, lstm.weight_hr_l0, self.cell_clip, self.proj_clip,
                                 self.kernel)
        return out, (h.unsqueeze(0), c.unsqueeze(0))

    def _start(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input half of the gates for every step in one matrix multiply, and the initial h, c."""
        lstm = self.lstm
        gates_x = torch.nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
        if state is not None:
            return gates_x, state[0][0], state[1][0]
        return gates_x, x.new_zeros(x.shape[0], lstm.proj_size), x.new_zeros(x.shape[0], lstm.hidden_size)

    def reference_forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The clipped cell step by step in autograd ops: the reference `clipped_lstm` is checked
        against (tests/unit/test_lstm.py; the GPU check does the same on CUDA). Same result, slower."""
        lstm = self.lstm
        gates_x, h, c = self._start(x, state)
        outputs = []
        for t in range(x.shape[1]):
            gates = gates_x[:, t] + h @ lstm.weight_hh_l0.t()
            i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            if self.cell_clip is not None:
                c = c.clamp(-self.cell_clip, self.cell_clip)
            h = (torch.sigmoid(o) * torch.tanh(c)) @ lstm.weight_hr_l0.t()
            if self.proj_clip is not None:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h.unsqueeze(0), c.unsqueeze(0))


class LstmStack(nn.Module):
    """One direction: n projected LSTM layers, dropout on each layer's input, residual after layer 1."""

    def __init__(self, dim: int, cells: int, n_layers: int, cell_clip, proj_clip, residual: bool, dropout: float,
                 kernel: str = "auto"):
        super().__init__()
        self.layers = nn.ModuleList(ProjectedLstm(dim, cells, dim, cell_clip, proj_clip, kernel)
                                    for _ in range(n_layers))
        self.residual = residual
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: list[State] | None = None) -> tuple[list[torch.Tensor], list[State]]:
        """Outputs of every layer [B, T, dim], and the final state of every layer."""
        outputs, new_state = [], []
        for i, layer in enumerate(self.layers):
            h, s = layer(self.dropout(x), None if state is None else state[i])
            if self.residual and i > 0:
                h = h + x
            outputs.append(h)
            new_state.append(s)
            x = h
        return outputs, new_state
